"""The import graph of the project's packages (harness, engine, kernels), read from the source
with `ast` (nothing is imported): layering (engine never imports harness; kernels imports neither
engine nor harness), no import cycle between modules, and none between harness's sub-packages.

An edge is an import statement anywhere in a module - at top level or inside a function, in a
try block, and so on - except under `if TYPE_CHECKING:` (never executed). `import a.b` and
`from a import b` point at module a.b when that is a module of the project, else at the deepest
project module named (`from a.b import name` -> a.b). Relative imports are resolved against the
importing module. Imports of anything outside the three packages are ignored.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "engine", "kernels")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # path:line of the import statement

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    """Module name -> file, for every .py file of the packages."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def known_modules(files: dict[str, Path]) -> set[str]:
    """Every module and package name, namespace packages (directories without __init__) included."""
    names = set(files)
    for name in files:
        parts = name.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return names


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: set[str], where: str):
        self.module, self.modules, self.where = module, modules, where
        self.package = module if is_package else module.rpartition(".")[0]
        self.edges: list[Edge] = []

    def _add(self, name: str, node: ast.stmt) -> None:
        """An edge to `name`, or to its deepest prefix that is a project module."""
        parts = name.split(".")
        if parts[0] not in PACKAGES:
            return
        while parts and ".".join(parts) not in self.modules:
            parts.pop()
        if parts:
            self.edges.append(Edge(self.module, ".".join(parts), f"{self.where}:{node.lineno}"))

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        for alias in node.names:
            sub = f"{prefix}.{alias.name}"
            self._add(sub if alias.name != "*" and sub in self.modules else prefix, node)


def import_edges() -> list[Edge]:
    files = project_files()
    modules = known_modules(files)
    edges = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        collector = ImportCollector(name, path.name == "__init__.py", modules, str(path.relative_to(ROOT)))
        collector.visit(tree)
        edges += collector.edges
    return edges


def graph_of(edges: list[Edge]) -> dict[str, dict[str, Edge]]:
    """source -> {target: first edge}, self-imports left out."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.target, {})
        if e.source != e.target:
            graph.setdefault(e.source, {}).setdefault(e.target, e)
    return graph


def strongly_connected(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components of more than one node, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def shortest_cycle(graph: dict[str, dict[str, Edge]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as [m0, m1, ..., m0]."""
    start, members = component[0], set(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return path[::-1] + [start]
            if child in members and child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start} in {component}")  # not a strong component


def cycles(graph: dict[str, dict[str, Edge]]) -> list[tuple[list[str], list[Edge]]]:
    """One shortest cycle per strongly connected component, with the edges (import statements)
    that make it."""
    found = []
    for component in strongly_connected(graph):
        cycle = shortest_cycle(graph, component)
        found.append((cycle, [graph[a][b] for a, b in zip(cycle, cycle[1:])]))
    return found


def describe(found: list[tuple[list[str], list[Edge]]]) -> str:
    return "\n".join(f"cycle {cycle}:\n" + "\n".join(f"    {e}" for e in edges) for cycle, edges in found)


def top_package(module: str) -> str:
    return module.split(".")[0]


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges()


def test_the_scan_sees_the_project(edges):
    """Guard against a vacuous pass: the scan finds the known edges of each package."""
    pairs = {(e.source, e.target) for e in edges}
    assert ("engine.model_runner", "engine.attention") in pairs
    assert ("engine.attention", "kernels.backend") in pairs
    assert ("kernels.triton_shared_prefix", "kernels.triton_common") in pairs
    assert any(top_package(e.source) == "harness" and top_package(e.target) == "engine" for e in edges)


def test_engine_does_not_import_harness(edges):
    bad = [str(e) for e in edges if top_package(e.source) == "engine" and top_package(e.target) == "harness"]
    assert not bad, "engine/ must not import harness:\n" + "\n".join(bad)


def test_kernels_import_neither_engine_nor_harness(edges):
    bad = [str(e) for e in edges if top_package(e.source) == "kernels" and top_package(e.target) in ("engine", "harness")]
    assert not bad, "kernels/ must not import engine or harness:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(edges, package):
    """No cycle in the whole module graph; parametrized by package only to say whose modules a
    cycle runs through (a cycle across packages fails for each of them)."""
    found = [(c, e) for c, e in cycles(graph_of(edges)) if any(top_package(m) == package for m in c)]
    assert not found, f"import cycles through {package}: {[c for c, _ in found]}\n{describe(found)}"


def harness_subpackage(module: str, packages: set[str]) -> str:
    """harness.cli.eval -> harness.cli; a module directly in harness/ (harness, harness.files)
    is the leaf package `harness`."""
    parts = module.split(".")
    if len(parts) >= 2 and ".".join(parts[:2]) in packages:
        return ".".join(parts[:2])
    return "harness"


def test_no_cycle_between_harness_subpackages(edges):
    files = project_files()
    packages = {name for name, path in files.items() if path.name == "__init__.py"}
    packages |= known_modules(files) - set(files)  # namespace packages
    sub = [
        Edge(harness_subpackage(e.source, packages), harness_subpackage(e.target, packages), e.where)
        for e in edges
        if top_package(e.source) == "harness" and top_package(e.target) == "harness"
    ]
    found = cycles(graph_of([e for e in sub if e.target != "harness"]))
    assert not found, f"cycles between harness sub-packages: {[c for c, _ in found]}\n{describe(found)}"


def test_cycle_finder():
    """The cycle search itself, on a made-up graph: a -> b -> c -> a, c -> d -> e -> d, f alone."""
    made_up = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("f", "a"), ("f", "f")]
    found = cycles(graph_of([Edge(s, t, "x.py:1") for s, t in made_up]))
    assert [c for c, _ in found] == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert [str(e) for e in found[1][1]] == ["d -> e (x.py:1)", "e -> d (x.py:1)"]
