"""The project's import graph has no cycle (module-level and function-level imports alike).

Every module of `helios/` and `deployments/` is parsed with `ast` (nothing is imported), each
`import` / `from ... import` anywhere in it becomes an edge to the project module it names,
and a cycle fails the test naming its modules in order. A function-level import does not make
a cycle harmless: it only hides it until the function runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("helios", "deployments")


def project_modules(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Candidate dotted names one import statement refers to (most specific first per name)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from a.b import c` imports the module a.b.c if there is one, else the name c of a.b.
    return [f"{target}.{alias.name}" for alias in node.names] + [target]


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in its body."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            candidates = _imported_names(node, name, is_package)
            if isinstance(node, ast.ImportFrom):
                submodules = [c for c in candidates[:-1] if c in modules]
                targets = submodules or [candidates[-1]]
                if len(submodules) < len(candidates) - 1:  # some names are attributes of the package
                    targets.append(candidates[-1])
            else:
                targets = candidates
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a non-project name
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph is a few hundred nodes, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest closed path through the component's first module (breadth-first)."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if nxt not in parents:
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start} in its own component {component}")


def _cycles_of(package: str) -> list[str]:
    graph = import_graph(project_modules())
    return [" -> ".join(c) for c in find_cycles(graph) if any(m.split(".")[0] == package for m in c)]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    assert _cycles_of(package) == []


def test_the_checker_sees_module_and_function_level_cycles(tmp_path):
    # The test above is only worth something if a cycle really fails it.
    pkg = tmp_path / "helios"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "deployments").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import A\n")
    (pkg / "sub" / "a.py").write_text("from helios.sub import b\nA = 1\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("import helios.sub.a\nfrom helios import d\n")
    (pkg / "d.py").write_text("X = 1\n")
    graph = import_graph(project_modules(tmp_path))
    assert graph["helios.sub"] == {"helios.sub.a"}
    assert graph["helios.sub.b"] == {"helios.sub.a"}  # function-level, relative
    assert graph["helios.c"] == {"helios.sub.a", "helios.d"}
    assert find_cycles(graph) == [["helios.sub.a", "helios.sub.b", "helios.sub.a"]]
