"""The data package has no import cycle, counting imports made inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import retain.data

PACKAGE = Path(retain.data.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imported_modules(source: str, known: set[str]) -> set[str]:
    """The ``retain.data`` modules among ``known`` that a module's code imports, anywhere in it
    (top level or inside a function)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n.split(".")[2] for n in names if n.startswith("retain.data.")}
    return found & known


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle through the graph, each as the path from a module back to itself."""
    found = []
    for start in graph:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    found.append([*path, start])
                elif nxt not in path and nxt > start:  # each cycle once, from its smallest module
                    stack.append((nxt, [*path, nxt]))
    return found


def test_the_cycle_finder_sees_function_local_imports():
    graph = {
        "a": imported_modules("from retain.data.b import x", {"a", "b"}),
        "b": imported_modules("def f():\n    from retain.data import a, DataError\n", {"a", "b"}),
    }
    assert graph == {"a": {"b"}, "b": {"a"}}
    assert cycles(graph) == [["a", "b", "a"]]


def test_no_module_imports_a_module_that_imports_it_back():
    graph = {m: imported_modules((PACKAGE / f"{m}.py").read_text(), set(MODULES)) for m in MODULES}
    assert cycles(graph) == []
