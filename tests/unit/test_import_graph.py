"""The imports of the plugin run one way: no cycle between two files, and the core never reaches
into the QGIS shell or QGIS.

The graph is read with ``ast`` from every ``import`` in ``rs_vlm_plugin/`` (those inside functions
and under ``TYPE_CHECKING`` too: a lazy import is still a dependency, only a later one). A package's
``__init__`` that imports its own children (re-exports) adds no edge.

    python tests/unit/test_import_graph.py      prints the cycles and the core's shell imports
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "rs_vlm_plugin"
CORE = f"{PACKAGE}.core"
SHELL_ROOTS = {"qgis", "PyQt5", "PyQt6", "qgis_shell"}


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` of the package (``a/__init__.py`` is ``a``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(path: Path, module: str) -> list[str]:
    """Every dotted name a file imports, relative imports resolved (``from a import b`` gives ``a.b``
    and ``a``: whichever of them is a module of the package)."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - (node.level - 1)] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            names += [f"{target}.{alias.name}" for alias in node.names] + [target]
    return names


def _edges_of_statement(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules each import statement of a file needs: ``from a import b`` is ``a.b`` when that
    is a module, else ``a`` (a name defined in ``a``)."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    targets: set[str] = set()

    def nearest(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets |= {nearest(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - (node.level - 1)] if node.level else []
            source = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:
                child = f"{source}.{alias.name}"
                targets.add(child if child in modules else nearest(source))
    targets.discard("")
    targets.discard(module)
    if is_package:
        targets = {t for t in targets if not t.startswith(module + ".")}
    return targets


def dependency_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the package its import statements name."""
    modules = module_names(root, package)
    return {module: _edges_of_statement(module, path, modules) for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted, each a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_cycle(component: list[str], graph: dict[str, set[str]]) -> str:
    """One cycle through a component, as a path of file names (``a.py -> b.py -> a.py``)."""
    members = set(component)
    start = component[0]
    # Breadth-first search for the shortest way back to start inside the component.
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    loop = paths[node] + [start]
                    return " -> ".join(_file(m) for m in loop) + f"  ({len(component)} files in the knot)"
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    nxt.append(target)
        frontier = nxt
    return ", ".join(_file(m) for m in component)


def _file(module: str) -> str:
    path = module_names()[module]
    return str(path.relative_to(ROOT))


def core_shell_imports(graph: dict[str, set[str]], root: Path = ROOT) -> list[str]:
    """``file: name`` for each import of QGIS, Qt or the shell by a module of the core."""
    offenders = []
    for module, path in module_names(root).items():
        if not (module == CORE or module.startswith(CORE + ".")):
            continue
        for name in imported_names(path, module):
            parts = name.split(".")
            if parts[0] in SHELL_ROOTS or (parts[0] == PACKAGE and len(parts) > 1 and parts[1] == "qgis_shell"):
                offenders.append(f"{path.relative_to(root)}: {name}")
    return sorted(set(offenders))


def test_the_graph_sees_relative_lazy_and_type_checking_imports():
    graph = dependency_graph()
    # ``from .knowledge import KnowledgeBase`` inside a method of the bundle: lazy and relative.
    assert f"{CORE}.knowledge" in graph[f"{CORE}.bundle"]
    # ``from ..encoding.tiles import Encoding`` under TYPE_CHECKING in the outlines.
    assert f"{CORE}.encoding.tiles" in graph[f"{CORE}.locate.outlines"]
    # ``from .models import cli as models_cli``: a module imported from its package.
    assert f"{CORE}.models.cli" in graph[f"{CORE}.cli"]


def test_no_import_cycle_between_files_of_the_plugin():
    graph = dependency_graph()
    knots = [describe_cycle(c, graph) for c in cycles(graph)]
    assert knots == [], "import cycles:\n  " + "\n  ".join(knots)


def test_the_cycle_finder_names_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_core_imports_neither_qgis_nor_the_shell():
    offenders = core_shell_imports(dependency_graph())
    assert offenders == [], "the core reaches into QGIS or the shell:\n  " + "\n  ".join(offenders)


if __name__ == "__main__":
    g = dependency_graph()
    found = cycles(g)
    print(f"{len(found)} import cycles" + (":" if found else "."))
    for c in found:
        print("  " + describe_cycle(c, g))
        print("    files: " + ", ".join(_file(m) for m in c))
    shell = core_shell_imports(g)
    print(f"{len(shell)} imports of QGIS or the shell in the core" + (":" if shell else "."))
    for line in shell:
        print("  " + line)
