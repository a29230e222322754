"""No import cycles in the package: every module imports on its own, and the import graph read
from the source (module-level, ``TYPE_CHECKING`` and function-local imports) is acyclic."""

from __future__ import annotations

import ast
import itertools
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "retain"


def modules_of(package: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (a folder), itself included."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":
            out[".".join(parts)] = path
    return out


MODULES = modules_of(PACKAGE)


# ---------------------------------------------------------------------------- on its own
#: Run in a fresh interpreter. It imports the third-party packages the modules import (torch
#: takes seconds), then forks one child per module: each child starts from that state, in
#: which no module of retain was ever imported, imports its one module and reports. The same
#: as ``python -c "import torch, ...; import <module>"`` per module, without paying for torch
#: each time.
_ISOLATED = r"""
import importlib, os, sys, traceback
out, jobs, modules = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for third_party in ("torch", "numpy", "yaml", "tqdm", "matplotlib"):
    try:
        importlib.import_module(third_party)
    except ImportError:
        pass
assert not any(m == "retain" or m.startswith("retain.") for m in sys.modules)
running = {}

def reap():
    pid, status = os.wait()
    running.pop(pid)

for i, name in enumerate(modules):
    while len(running) >= jobs:
        reap()
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            with open(os.path.join(out, str(i)), "w") as f:
                f.write(name + "\n" + traceback.format_exc())
            os._exit(1)
    running[pid] = name
while running:
    reap()
"""


def import_each(src: Path, modules: list[str], out: Path) -> list[str]:
    """Import every module of ``modules`` (found under ``src``) on its own; the failures'
    tracebacks."""
    jobs = max(2, min(8, os.cpu_count() or 2))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _ISOLATED, str(out), str(jobs), *modules],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return [p.read_text() for p in sorted(out.iterdir(), key=lambda p: int(p.name))]


def test_every_module_imports_on_its_own(tmp_path):
    failures = import_each(SRC, sorted(MODULES), tmp_path)
    assert not failures, f"{len(failures)} modules fail to import on their own:\n\n" + "\n".join(
        failures
    )


# ---------------------------------------------------------------------------- the graph
class ImportGraph:
    """module -> {imported module of the package: line of the first such import}, over every
    import statement of each module (module level, ``if TYPE_CHECKING``, inside functions).

    ``from p import x`` depends on ``p.x`` when that is a module, else on ``p`` and on the
    module that ``p/__init__`` takes ``x`` from (a re-export). A package's ``__init__``
    importing modules inside that package does not count."""

    def __init__(self, modules: dict[str, Path]) -> None:
        self.modules = modules
        self.reexports = {name: self._reexports(name) for name in modules if self._package(name)}
        self.edges = {name: self._edges(name) for name in modules}

    def _package(self, name: str) -> bool:
        return name in self.modules and self.modules[name].name == "__init__.py"

    def _resolve(self, module: str, node: ast.ImportFrom) -> str:
        """The absolute module name a ``from ... import`` names."""
        if not node.level:
            return node.module or ""
        base = module.split(".")
        if not self._package(module):
            base.pop()  # a module's relative imports start from its package
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def _owner(self, name: str) -> str | None:
        """The module of the package that importing ``name`` executes last, if any."""
        while name and name not in self.modules:
            name = name.rpartition(".")[0]
        return name or None

    def _reexports(self, package: str) -> dict[str, str]:
        """Names a package's ``__init__`` takes from one of its own modules: name -> module."""
        out: dict[str, str] = {}
        for node in ast.parse(self.modules[package].read_text()).body:
            if isinstance(node, ast.ImportFrom):
                source = self._resolve(package, node)
                if source.startswith(package + ".") and source in self.modules:
                    for alias in node.names:
                        out[alias.asname or alias.name] = source
        return out

    def _edges(self, module: str) -> dict[str, int]:
        edges: dict[str, int] = {}

        def add(target: str | None, line: int) -> None:
            if target is None or target == module:
                return
            if self._package(module) and target.startswith(module + "."):
                return  # a package's __init__ importing its own modules
            edges.setdefault(target, line)

        for node in ast.walk(ast.parse(self.modules[module].read_text())):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(self._owner(alias.name), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                source = self._resolve(module, node)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in self.modules:
                        add(sub, node.lineno)
                    else:
                        add(self._owner(source), node.lineno)
                        add(self.reexports.get(source, {}).get(alias.name), node.lineno)
        return edges

    def cycles(self) -> list[list[str]]:
        """One shortest cycle per strongly connected component of more than one module."""
        return [self._cycle_in(c) for c in self._components()]

    def _components(self) -> list[set[str]]:
        """Strongly connected components of more than one module (Tarjan, iterative)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        out: list[set[str]] = []
        for root in sorted(self.edges):
            if root in index:
                continue
            work = [(root, iter(sorted(self.edges[root])))]
            index[root] = low[root] = len(index)
            stack.append(root)
            on_stack.add(root)
            while work:
                v, children = work[-1]
                w = next(children, None)
                if w is not None:
                    if w not in index:
                        index[w] = low[w] = len(index)
                        stack.append(w)
                        on_stack.add(w)
                        work.append((w, iter(sorted(self.edges.get(w, {})))))
                    elif w in on_stack:
                        low[v] = min(low[v], index[w])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        out.append(component)
        return sorted(out, key=min)

    def _cycle_in(self, component: set[str]) -> list[str]:
        """A shortest cycle through the first module of a component (breadth-first)."""
        start = min(component)
        parent = {start: start}
        frontier = [start]
        while frontier:
            following = []
            for v in frontier:
                for w in sorted(self.edges[v]):
                    if w == start:
                        path = [v]
                        while path[-1] != start:
                            path.append(parent[path[-1]])
                        return [*reversed(path), start]
                    if w in component and w not in parent:
                        parent[w] = v
                        following.append(w)
            frontier = following
        raise AssertionError(f"no cycle through {start}")

    def describe(self, cycle: list[str]) -> str:
        """The cycle, one import (file and line) a line."""
        lines = [" -> ".join(cycle)]
        for a, b in itertools.pairwise(cycle):
            where = os.path.relpath(self.modules[a], SRC.parent)
            lines.append(f"    {where}:{self.edges[a][b]} imports {b}")
        return "\n".join(lines)


def test_the_import_graph_has_no_cycles():
    graph = ImportGraph(MODULES)
    cycles = graph.cycles()
    assert not cycles, "import cycles:\n" + "\n".join(graph.describe(c) for c in cycles)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The reader itself, on a toy package: module-level, relative, ``TYPE_CHECKING``,
    function-local and re-exported imports make edges, an ``__init__`` importing its own
    modules does not, and a cycle is found and printed."""
    files = {
        "__init__.py": "from toy.a import A\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "b.py": "def f():\n    import toy.sub.c\nB = 2\n",
        "sub/__init__.py": "from . import c\nfrom .c import C\n",
        "sub/c.py": "C = 3\n",
        "d.py": "from toy.sub import C\nfrom toy import a\n",
        "e.py": "from . import A\n",
    }
    for name, text in files.items():
        (tmp_path / "toy" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "toy" / name).write_text(text)
    graph = ImportGraph(modules_of(tmp_path / "toy"))
    assert graph.edges == {
        "toy": {},
        "toy.a": {"toy.b": 3},
        "toy.b": {"toy.sub.c": 2},
        "toy.sub": {},
        "toy.sub.c": {},
        "toy.d": {"toy.sub": 1, "toy.sub.c": 1, "toy.a": 2},
        "toy.e": {"toy": 1, "toy.a": 1},
    }
    assert graph.cycles() == []
    (tmp_path / "toy" / "sub" / "c.py").write_text("def g():\n    from toy.d import x\n")
    graph = ImportGraph(modules_of(tmp_path / "toy"))
    assert graph.cycles() == [["toy.a", "toy.b", "toy.sub.c", "toy.d", "toy.a"]]
    assert "toy/sub/c.py:2 imports toy.d" in graph.describe(graph.cycles()[0])
