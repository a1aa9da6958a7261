#!/usr/bin/env python3
"""Import cycles between the modules of each crate (`make cycles`; part of `make test`).

Two levels, the ones the house style cares about:
* top-level modules of a crate (`coordinator/src/state/` and `coordinator/src/artifacts.rs` are
  `state` and `artifacts`): `a` depends on `b` when a file under `a` names `crate::b`;
* sibling files inside one module folder (`http/sse.rs` and `http/server.rs`): `x` depends on
  `y` when `x` names `super::y` or `crate::<folder>::y`. A child naming its parent (`mod.rs`) is
  not a cycle: the parent owns its children.

Comments, and test code (everything from the first `#[cfg(test)]` line of a file, and files named `tests.rs`
or `*_tests.rs`) is left out: tests may reach anywhere. Prints each cycle and exits 1 when there
is one; prints the number of modules and edges checked otherwise.
"""
import os
import re
import sys

CRATES = ["common", "coordinator", "worker"]
PATH_RE = re.compile(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)")


def production_text(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    # Comments (docs included) name modules without depending on them.
    return re.sub(r"//[^\n]*", "", text)


def is_test_file(name):
    return name == "tests.rs" or name.endswith("_tests.rs")


def module_of(rel):
    """`state/rounds.rs` -> ['state', 'rounds']; `state/mod.rs` -> ['state']."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts


def sccs(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(root):
    cycles, nodes, edges = [], 0, 0
    for crate in CRATES:
        src = os.path.join(root, crate, "src")
        files = []
        for d, _, names in os.walk(src):
            for n in names:
                if n.endswith(".rs") and not is_test_file(n):
                    files.append(os.path.relpath(os.path.join(d, n), src))
        modules = {tuple(module_of(f)) for f in files}
        top = {}  # top-level graph
        siblings = {}  # (folder) -> graph of its child files
        for rel in files:
            mod = module_of(rel)
            if not mod:
                continue
            text = production_text(os.path.join(src, rel))
            for kind, path in PATH_RE.findall(text):
                segs = path.strip(":").split("::")
                if kind == "crate":
                    target = segs
                else:  # super:: from a file: its parent folder (from mod.rs: the grandparent)
                    base = mod[:-1]
                    target = base + segs
                if not target:
                    continue
                if kind == "crate" and target[0] != mod[0] and (target[0],) in modules:
                    top.setdefault(mod[0], set()).add(target[0])
                if len(mod) >= 2 and len(target) >= len(mod) and target[: len(mod) - 1] == mod[:-1]:
                    sib = target[len(mod) - 1]
                    if sib != mod[-1] and tuple(mod[:-1] + [sib]) in modules:
                        siblings.setdefault(tuple(mod[:-1]), {}).setdefault(mod[-1], set()).add(sib)
        graphs = [(crate, top)] + [
            (f"{crate}::{'::'.join(folder)}", g) for folder, g in sorted(siblings.items())
        ]
        for name, g in graphs:
            nodes += len(set(g) | {w for ws in g.values() for w in ws})
            edges += sum(len(ws) for ws in g.values())
            for comp in sccs(g):
                cycles.append(f"{name}: {' <-> '.join(comp)}")
    for c in cycles:
        print(f"import cycle in {c}")
    if cycles:
        return 1
    print(f"no import cycles ({nodes} modules, {edges} dependencies in {', '.join(CRATES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
