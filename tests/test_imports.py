"""The package's import graph has no cycle: every import of src/ -- at the top of a module or inside a function --
goes down the layers (library -> runs -> stages -> tools), so that no module is visited, left and visited again."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SRC = ROOT / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The src modules ``path`` imports, anywhere in it; importing a module from outside its package also runs the
    package's __init__ (an edge to it)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package up
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in modules and name != me:
                found.add(name)
                parts = name.split(".")
                for i in range(2, len(parts)):  # the packages above it, run first (not src itself)
                    parent = ".".join(parts[:i])
                    if not (me + ".").startswith(parent + ".") and parent != me:
                        found.add(parent)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(SRC.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a module importing itself)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
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
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "src.stages.pipeline" in graph["src.train"] | set().union(*graph.values())
    assert cycles(graph) == []


def test_a_cycle_is_found():
    """The check itself: a made-up graph with a circle (the lazy import that used to hide one) is reported."""
    graph = {"src.costs": {"src.hybrid"}, "src.hybrid": {"src.selectors"}, "src.selectors": {"src.costs"},
             "src.model": set()}
    assert cycles(graph) == [["src.costs", "src.hybrid", "src.selectors"]]


def test_the_library_imports_nothing_above_it():
    """The model, the sparse library, the selectors and approximators and the cost formulas never import the run
    infrastructure, the stages or the tools."""
    graph = import_graph()
    core = ("model", "sparse", "selectors", "approximators", "costs", "hybrid", "metrics", "data", "errors", "config")
    library = [m for m in graph if m != "src" and m.split(".")[1] in core]
    above = ("src.runs", "src.stages", "src.bench", "src.analysis", "src.report", "src.train", "src.sample",
             "src.demo", "src.analyze")
    for m in library:
        if m == "src.costs.accounting":
            continue  # the accounting reads the registries: library-level, above the formulas
        assert not {d for d in graph[m] if d.startswith(above)}, m
