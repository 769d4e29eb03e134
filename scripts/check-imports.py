#!/usr/bin/env python3
"""No module imports a module that imports it back (docs/ARCHITECTURE.md, "Who may import whom").

For each crate's src/ it builds the module graph from `crate::…` and `super::…` paths in the
code outside `#[cfg(test)] mod …` blocks, and reports every pair of modules that use each
other and every longer cycle. A parent declaring `mod child;` is not an edge: a folder's
mod.rs may re-export its children. Exits 1 when it finds one. `-v` prints the graph.

Usage: scripts/check-imports.py crates/*/src
"""
import os
import re
import sys


def modules(root):
    mods = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith('.rs') or dirpath.startswith(os.path.join(root, 'bin')):
                continue
            parts = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
            if parts[-1] == 'mod':
                parts = parts[:-1]
            if parts in (['lib'], ['main']):
                continue
            mods[tuple(parts)] = os.path.join(dirpath, f)
    return mods


def non_test(src):
    """The source before its first `#[cfg(test)]` module."""
    m = re.search(r'#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod \w+', src)
    return src if m is None else src[:m.start()]


def graph(mods):
    def resolve(path):
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in mods:
                return tuple(path[:n])
        return None

    edges = {}
    for m, f in mods.items():
        with open(f, encoding='utf-8') as fh:
            src = non_test(fh.read())
        deps = set()
        for mt in re.finditer(r'\b(crate|super)((?:::\w+)*)(?:::\{([^}]*)\})?', src):
            kind, tail, group = mt.group(1), mt.group(2), mt.group(3)
            segs = [s for s in tail.split('::') if s]
            if kind == 'crate':
                base = []
            else:
                base = list(m[:-1])
                while segs and segs[0] == 'super':
                    base, segs = base[:-1], segs[1:]
            cands = [base + segs] if segs else []
            for g in (group or '').split(','):
                g = g.strip().split(' ')[0]
                if g and g != 'self':
                    cands.append(base + segs + g.split('::'))
            for c in cands:
                r = resolve(c)
                # A module may use its own children (a folder's mod.rs re-exports them).
                if r and r != m and r[:len(m)] != m:
                    deps.add(r)
        edges[m] = deps
    return edges


def problems(edges):
    name = lambda m: '::'.join(m)
    found = []
    for a, ds in edges.items():
        for b in ds:
            if a in edges.get(b, ()) and name(a) < name(b):
                found.append(f'{name(a)} <-> {name(b)}')
    color, stack = {}, []

    def dfs(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(edges.get(u, ())):
            if color.get(v) == 1:
                cycle = stack[stack.index(v):] + [v]
                if len(cycle) > 3:
                    found.append(' -> '.join(map(name, cycle)))
            elif not color.get(v):
                dfs(v)
        stack.pop()
        color[u] = 2

    for m in sorted(edges):
        if not color.get(m):
            dfs(m)
    return found


def main():
    roots = [a for a in sys.argv[1:] if a != '-v']
    bad = 0
    for root in roots:
        mods = modules(root)
        if not mods and not os.path.exists(os.path.join(root, 'lib.rs')):
            print(f'{root}: no modules found', file=sys.stderr)
            return 2
        edges = graph(mods)
        if '-v' in sys.argv:
            for m in sorted(edges):
                print(f"{root}: {'::'.join(m):28} -> {', '.join(sorted('::'.join(d) for d in edges[m]))}")
        for p in problems(edges):
            print(f'{root}: import cycle: {p}')
            bad += 1
    print(f'check-imports: {len(roots)} crates, {bad} import cycles')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
