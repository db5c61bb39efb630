#!/usr/bin/env python3
"""module-cycles.py: the import cycles between gosyncd's modules, and the imports that
go up the layers of README.md's Development section.

Reads the dependency graph cargo-modules writes (Graphviz) on standard input, keeps
the "uses" edges, folds them onto modules at two depths (`sync`, then `sync::push`;
edges between a module and its own parent or child are left out) and prints, for each
depth, how many modules there are, how many import arrows, and every cycle with its
arrows; then every top-level import from a lower row of LAYERS to a higher one. Exits
1 when there is a cycle or an upward import.

    cargo install cargo-modules
    cargo modules dependencies --lib --no-externs --no-sysroot --no-fns --no-types \
        --no-traits | contrib/dev/module-cycles.py
"""

import collections
import re
import sys


# README.md's rows, from the top: a module imports from its own row or the rows below.
LAYERS = [
    ["cli"],
    ["daemon", "group"],
    ["server", "watcher", "reconcile", "metrics"],
    ["node"],
    ["sync", "apply", "rollback", "baseline"],
    ["hooks", "backup", "diff", "client"],
    ["manifest", "plan", "tree"],
    ["config", "tls", "certs", "certgen", "access", "paths", "protocol"],
]


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main():
    edges = set()
    for line in sys.stdin:
        m = re.match(r'\s*"([^"]+)" -> "([^"]+)" \[label="uses"', line)
        if m:
            edges.add((m.group(1), m.group(2)))
    if not edges:
        sys.exit("no \"uses\" edge read: pipe in the output of `cargo modules dependencies`")
    any_cycle = False
    for depth in (1, 2):
        graph = collections.defaultdict(set)
        for a, b in edges:
            ta, tb = ("::".join(n.split("::")[: 1 + depth]) for n in (a, b))
            if ta == tb or ta.startswith(tb + "::") or tb.startswith(ta + "::"):
                continue
            graph[ta].add(tb)
            graph[tb]
        found = cycles(graph)
        arrows = sum(len(targets) for targets in graph.values())
        print(f"depth {depth}: {len(graph)} modules, {arrows} import arrows, {len(found)} cycles")
        short = lambda n: n.split("::", 1)[1] if "::" in n else n
        for component in found:
            any_cycle = True
            print("  cycle:", ", ".join(short(m) for m in component))
            for a in component:
                for b in sorted(graph[a] & set(component)):
                    print(f"    {short(a)} -> {short(b)}")
    row = {m: i for i, names in enumerate(LAYERS) for m in names}
    upward = sorted(
        {
            (a.split("::")[1], b.split("::")[1])
            for a, b in edges
            if a.count("::") >= 1 and b.count("::") >= 1
            and a.split("::")[1] in row and b.split("::")[1] in row
            and row[b.split("::")[1]] < row[a.split("::")[1]]
        }
    )
    print(f"imports up the layers: {len(upward)}")
    for a, b in upward:
        print(f"  {a} -> {b}")
    unplaced = sorted(
        {n.split("::")[1] for e in edges for n in e if n.count("::") >= 1} - set(row)
    )
    if unplaced:
        print("modules in no row of LAYERS:", ", ".join(unplaced))
    sys.exit(1 if any_cycle or upward else 0)


if __name__ == "__main__":
    main()
