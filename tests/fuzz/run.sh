#!/usr/bin/env bash
# Builds and runs keel's libFuzzer harnesses (tests/fuzz/README.md).
#
#   tests/fuzz/run.sh build OUT CONFIGDIR
#       compile the core and every harness with clang (libFuzzer, ASan, UBSan)
#       into OUT; CONFIGDIR holds the config.h of a configured build
#   tests/fuzz/run.sh run OUT [--seconds S] [--runs N] [--work DIR]
#                     [--summary FILE] [HARNESS...]
#       run each harness on its committed corpus (tests/fuzz/corpus/NAME):
#       every input of the corpus first, then new ones until S seconds or N
#       runs have passed.  With --work, new interesting inputs are kept in
#       DIR/NAME (and reused next time); without it they are thrown away, so
#       the committed corpus is never modified.  Crashing inputs are written
#       to OUT/artifacts/.  Prints PASS/FAIL per harness, appends one line per
#       harness to OUT/history.tsv, and writes "PASSED FAILED" to FILE.
#   tests/fuzz/run.sh merge OUT WORKDIR [HARNESS...]
#       minimise WORKDIR/NAME into the committed corpus (libFuzzer -merge=1),
#       for when a long run found inputs worth keeping
#
# Exit status: 0 when every harness passed.
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ALL=(fuzz_token fuzz_router fuzz_manifest fuzz_conf fuzz_json_body fuzz_import)

die() {
	printf 'fuzz: error: %s\n' "$*" >&2
	exit 1
}

harnesses() {
	local out=$1
	shift
	local h list=("$@")
	[ ${#list[@]} -gt 0 ] || list=("${ALL[@]}")
	for h in "${list[@]}"; do
		if [ -x "$out/$h" ]; then
			printf '%s\n' "$h"
		elif [ $# -gt 0 ]; then
			die "no harness $h in $out (build first)"
		fi
	done
}

cmd_build() {
	[ $# -eq 2 ] || die "usage: run.sh build OUT CONFIGDIR"
	command -v clang >/dev/null || die "clang not found (apt-get install clang)"
	[ -f "$2/config.h" ] || die "$2/config.h not found: configure a build first"
	mkdir -p "$1"
	make --no-print-directory -s -f "$HERE/fuzz.mk" SRC="$ROOT" OUT="$1" CONFIG="$2" -j2
}

cmd_run() {
	local out=$1
	shift
	local seconds=0 runs=0 work="" summary="" names=()
	while [ $# -gt 0 ]; do
		case "$1" in
		--seconds) seconds=$2; shift ;;
		--runs) runs=$2; shift ;;
		--work) work=$2; shift ;;
		--summary) summary=$2; shift ;;
		-*) die "unknown option $1" ;;
		*) names+=("$1") ;;
		esac
		shift
	done
	[ "$seconds" != 0 ] || [ "$runs" != 0 ] || seconds=60
	mkdir -p "$out/artifacts" "$out/logs"
	local passed=0 failed=0 h
	for h in $(harnesses "$out" "${names[@]}"); do
		local seeds="$ROOT/tests/fuzz/corpus/$h" dir tmp=""
		mkdir -p "$seeds"
		if [ -n "$work" ]; then
			dir="$work/$h"
			mkdir -p "$dir"
		else
			tmp=$(mktemp -d)
			dir=$tmp
		fi
		local args=(-dict="$HERE/json.dict" -artifact_prefix="$out/artifacts/$h-"
			-print_final_stats=1 -rss_limit_mb=4096 -timeout=10)
		[ "$seconds" != 0 ] && args+=(-max_total_time="$seconds")
		[ "$runs" != 0 ] && args+=(-runs="$runs")
		local log="$out/logs/$h.log" rc=0 start end
		start=$(date +%s)
		# The conf harness may name any file as a key file: stdin is /dev/null
		# and setsid drops the controlling terminal, so /dev/stdin and
		# /dev/tty cannot block it.
		(cd "$out" && setsid -w "./$h" "${args[@]}" "$dir" "$seeds" </dev/null >"$log" 2>&1) ||
			rc=$?
		end=$(date +%s)
		[ -n "$tmp" ] && rm -rf "$tmp"
		local execs corpus
		execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
		corpus=$(sed -n 's/^#[0-9]*[[:space:]]*DONE.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' "$log" | tail -n1)
		execs=${execs:-0}
		corpus=${corpus:-?}
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$h" $((end - start)) \
			"$execs" "$corpus" "$([ $rc -eq 0 ] && echo pass || echo FAIL)" >>"$out/history.tsv"
		if [ $rc -eq 0 ]; then
			printf 'PASS %s (%s execs in %d s, corpus %s)\n' "$h" "$execs" $((end - start)) "$corpus"
			passed=$((passed + 1))
		else
			printf 'FAIL %s (exit %d); log %s\n' "$h" "$rc" "$log"
			grep -E -A40 '^==[0-9]+==ERROR|runtime error|deadly signal|Test unit written' "$log" |
				head -n 60 || tail -n 40 "$log"
			printf 'A crashing input becomes a regression test: copy it to %s/regress-NAME, fix the bug, run again.\n' "$seeds"
			failed=$((failed + 1))
		fi
	done
	printf 'fuzz: %d passed, %d failed\n' "$passed" "$failed"
	[ -z "$summary" ] || printf '%d %d\n' "$passed" "$failed" >"$summary"
	[ "$failed" -eq 0 ]
}

cmd_merge() {
	[ $# -ge 2 ] || die "usage: run.sh merge OUT WORKDIR [HARNESS...]"
	local out=$1 work=$2 h
	shift 2
	for h in $(harnesses "$out" "$@"); do
		[ -d "$work/$h" ] || continue
		local seeds="$ROOT/tests/fuzz/corpus/$h" before after
		before=$(find "$seeds" -type f | wc -l)
		(cd "$out" && "./$h" -merge=1 "$seeds" "$work/$h" </dev/null >"$out/logs/$h.merge.log" 2>&1) ||
			die "merge of $h failed; see $out/logs/$h.merge.log"
		after=$(find "$seeds" -type f | wc -l)
		printf '%s: corpus %d -> %d files\n' "$h" "$before" "$after"
	done
}

case "${1:-}" in
build) shift; cmd_build "$@" ;;
run) shift; [ $# -ge 1 ] || die "usage: run.sh run OUT [options] [HARNESS...]"; cmd_run "$@" ;;
merge) shift; cmd_merge "$@" ;;
*) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
