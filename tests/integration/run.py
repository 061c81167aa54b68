#!/usr/bin/python3
"""Runs keel's integration tests (make installcheck; normally through ./dev test).

Discovers tests/integration/test_*.py and runs every function named test_* in
each, in file order, one at a time, each within a time bound. A module may set
TIMEOUT (seconds) for all its tests, or a test may carry a `timeout` attribute
(see keeltest.timeout). Only tests whose "file::test" name contains one of the
filters run; filters come from the command line or KEEL_TEST_FILTER (separated
by spaces or commas; shell wildcards allowed).

Prints PASS/FAIL/SKIP per test, the traceback and server log tail of each
failure, and "N passed, N failed, N skipped" at the end (a test skips itself
with keeltest.skip(reason); it is never counted as passed). Exit status 1 when
anything failed.
"""

import fnmatch
import importlib.util
import inspect
import os
import shutil
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TIMEOUT = 120


class TestTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise TestTimeout("test exceeded its time bound")


def parse_filters(argv):
    raw = list(argv) or [os.environ.get("KEEL_TEST_FILTER", "")]
    out = []
    for item in raw:
        out += [f for f in item.replace(",", " ").split() if f]
    return out


def selected(name, filters):
    if not filters:
        return True
    for f in filters:
        if any(c in f for c in "*?["):
            if fnmatch.fnmatch(name, f):
                return True
        elif f in name:
            return True
    return False


def load_module(path):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def module_tests(module):
    tests = []
    for name, obj in vars(module).items():
        if name.startswith("test_") and inspect.isfunction(obj) and obj.__module__ == module.__name__:
            tests.append(obj)
    tests.sort(key=lambda f: f.__code__.co_firstlineno)
    return tests


def save_logs(keeltest, label, keelds):
    """Copies the logs of a failed test's servers next to the build, for later reading."""
    outdir = os.path.join(keeltest.builddir, "tests", "integration", "logs")
    saved = []
    try:
        os.makedirs(outdir, exist_ok=True)
        for i, k in enumerate(keelds):
            dest = os.path.join(outdir, "%s.%d.log" % (label.replace("::", "__"), i))
            if os.path.exists(k.log_path):
                shutil.copyfile(k.log_path, dest)
                saved.append(dest)
    except OSError:
        pass
    return saved


def print_failure(keeltest, label, tb, keelds):
    print("FAIL %s" % label, flush=True)
    print(tb.rstrip())
    for k in keelds:
        print("----- keeld log (last 40 lines) %s" % k.log_path)
        print(k.log_tail(40))
    for path in save_logs(keeltest, label, keelds):
        print("----- saved %s" % path)
    print("", flush=True)


def run_test(keeltest, label, func, timeout):
    """Runs one test; returns ("pass" | "fail" | "skip", seconds)."""
    keeltest._begin_test()
    start = time.monotonic()
    tb = None
    skipped = None
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, keeltest.bound(timeout))
    try:
        func()
    except keeltest.Skip as e:
        skipped = str(e)
    except TestTimeout:
        tb = traceback.format_exc() + "\n(time bound: %.0f s)" % keeltest.bound(timeout)
    except BaseException as e:  # noqa: BLE001 - a test may raise anything
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    keelds = keeltest._keelds_of_test()
    # Stop what the test left running before judging it, so that exit-time
    # sanitizer and valgrind reports are in the logs.
    try:
        keeltest._end_test()
    except Exception:  # noqa: BLE001
        tb = (tb or "") + "\ncleanup failed:\n" + traceback.format_exc()
    if tb is None:
        for k in keelds:
            if k.cleanup_status not in (None, 0):
                tb = ("keeld (%s) did not shut down cleanly when the test ended: SIGTERM gave "
                      "status %s" % (k.log_path, k.cleanup_status))
                break
            report = k.sanitizer_report()
            if report:
                tb = "memory error reported by keeld (%s):\n%s" % (k.log_path, report)
                break
    elapsed = time.monotonic() - start
    if tb is None and skipped is not None:
        print("SKIP %s (%.1fs): %s" % (label, elapsed, skipped), flush=True)
        return "skip", elapsed
    if tb is None:
        print("PASS %s (%.1fs)" % (label, elapsed), flush=True)
        return "pass", elapsed
    print_failure(keeltest, label, tb + "\n(after %.1f s)" % elapsed, keelds)
    return "fail", elapsed


def main(argv):
    if not os.environ.get("KEEL_TEST_DATABASE_URL"):
        print("KEEL_TEST_DATABASE_URL is not set. The integration tests need keel installed "
              "and a PostgreSQL to create databases in: run them with ./dev test.", file=sys.stderr)
        return 1
    if not os.environ.get("KEEL_PREFIX"):
        print("KEEL_PREFIX is not set (make installcheck sets it); run the tests with ./dev test.",
              file=sys.stderr)
        return 1
    sys.path.insert(0, HERE)
    import keeltest

    filters = parse_filters(argv[1:])
    files = sorted(f for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py"))
    passed = failed = skipped = 0
    ran_any = False
    for fname in files:
        mod_label = fname
        try:
            module = load_module(os.path.join(HERE, fname))
        except Exception:  # noqa: BLE001
            if selected(mod_label, filters) or not filters:
                print_failure(keeltest, "%s::<import>" % mod_label, traceback.format_exc(), [])
                failed += 1
                ran_any = True
            continue
        tests = [t for t in module_tests(module) if selected("%s::%s" % (fname, t.__name__), filters)]
        if not tests:
            continue
        default_timeout = getattr(module, "TIMEOUT", DEFAULT_TIMEOUT)
        try:
            for func in tests:
                ran_any = True
                label = "%s::%s" % (fname, func.__name__)
                result, _ = run_test(keeltest, label, func,
                                     getattr(func, "timeout", default_timeout))
                if result == "pass":
                    passed += 1
                elif result == "skip":
                    skipped += 1
                else:
                    failed += 1
        finally:
            keeltest._end_module()

    if not ran_any:
        # Running nothing is a failure: a typo in a filter must not look green.
        print("no integration test matched%s" % (" the filter %r" % filters if filters else ""))
        failed = 1
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped), flush=True)
    summary = os.environ.get("KEEL_TEST_SUMMARY")
    if summary:
        with open(summary, "w") as f:
            f.write("%d %d %d\n" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
