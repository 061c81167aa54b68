#!/usr/bin/env python3
"""Check that core/ includes point down the layers and form no circle.

Layers, top to bottom: process, ops, plugin, net, http, identity, data,
conf, util.  ops sits just under process: it reads stats from every lower
layer, and nothing below it may include it (they count through
util/counters instead).  A file and its header count as one unit; two units
that include each other, directly or through others, form a circle.

An include is exempt when the line itself, or the comment right above it,
carries "include-ok:" followed by the reason.  Exempt includes are left
out of both checks.

Usage: check-includes.py [CORE_DIR]; exits 1 and lists each violation.
"""
import os
import re
import sys

RANK = {"process": 0, "ops": 1, "plugin": 2, "net": 3, "http": 4,
        "identity": 5, "data": 6, "conf": 7, "util": 8}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/([A-Za-z0-9_]+)\.h"')


def units(core):
    for layer in sorted(RANK):
        d = os.path.join(core, layer)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith((".c", ".h")):
                yield layer, name[:-2], os.path.join(d, name)


def main():
    core = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "core")
    edges = {}
    problems = []
    for layer, base, path in units(core):
        src = f"{layer}/{base}"
        edges.setdefault(src, set())
        comment = ""
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                m = INCLUDE.match(line)
                if m and m.group(1) in RANK:
                    exempt = "include-ok:" in line or "include-ok:" in comment
                    dst = f"{m.group(1)}/{m.group(2)}"
                    where = f"{os.path.relpath(path, os.path.dirname(core))}:{lineno}"
                    if not exempt and dst != src:
                        edges[src].add(dst)
                        if RANK[m.group(1)] < RANK[layer]:
                            problems.append(f"{where}: {layer}/ includes {dst}.h,"
                                            f" which is a higher layer")
                stripped = line.strip()
                if stripped.startswith(("/*", "*", "//")):
                    comment = stripped if stripped.startswith(("/*", "//")) else comment + stripped
                else:
                    comment = ""
    # Circles: strongly connected components with more than one unit.
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    for comp in comps:
        problems.append("include circle among: " + ", ".join(comp))
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} include-layering problem(s); fix them, or mark a"
              " deliberate one with an 'include-ok: why' comment", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
