"""The plugin's source parses and imports on every Python QGIS ships (3.9 on macOS up to 3.40 LTR).

Two checks without a Python 3.9 at hand (tests/compat/test_other_pythons.py runs the core on the
real ones): the grammar of 3.9 (no ``match``, no parenthesised context managers ...), and no PEP 604
union (``A | None``) that Python evaluates at run time: a module-level alias, an ``isinstance``
argument, or an annotation in a module without ``from __future__ import annotations``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "rs_vlm_plugin"
TYPE_NAMES = {"str", "int", "float", "bool", "bytes", "list", "dict", "tuple", "set", "type", "object"}
SOURCES = sorted(p for p in PLUGIN.rglob("*.py") if "__pycache__" not in p.parts)


def _looks_like_type(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):  # a class: CapWords, not a CONSTANT
        return node.id in TYPE_NAMES or (node.id[:1].isupper() and not node.id.isupper())
    if isinstance(node, ast.Attribute):  # module.Class (np.ndarray, os.PathLike), not Qt.Flag or os.O_CREAT
        return isinstance(node.value, ast.Name) and node.value.id[:1].islower() and not node.attr.isupper()
    if isinstance(node, ast.Subscript):
        return _looks_like_type(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _looks_like_type(node.left) and _looks_like_type(node.right)
    return False


def _is_union(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and _looks_like_type(node)


def runtime_unions(source: str) -> list[int]:
    """Lines where a ``X | Y`` of types is evaluated when the module runs (a TypeError on 3.9)."""
    tree = ast.parse(source)
    lazy = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body)
    annotations: set[int] = set()
    for node in ast.walk(tree):
        for ann in _annotations_of(node):
            annotations.update(id(sub) for sub in ast.walk(ann))
    found = []
    for node in ast.walk(tree):
        if not _is_union(node):
            continue
        if id(node) in annotations and lazy:
            continue
        found.append(node.lineno)
    return sorted(set(found))


def _annotations_of(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
        return [a.annotation for a in every if a.annotation] + ([node.returns] if node.returns else [])
    if isinstance(node, ast.AnnAssign):
        return [node.annotation]
    return []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PLUGIN)))
def test_source_parses_with_python_39_grammar(path):
    ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))


def test_no_union_of_types_is_evaluated_at_run_time():
    offenders = [f"{p.relative_to(PLUGIN)}:{line}" for p in SOURCES for line in runtime_unions(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_scan_finds_what_python_39_refuses():
    assert runtime_unions("from __future__ import annotations\nAnyResult = DescribeResult | SearchResult | None\n") == [2]
    assert runtime_unions("from __future__ import annotations\nisinstance(x, int | str)\n") == [2]
    assert runtime_unions("def f(x: int | None) -> str | None: ...\n") == [1]
    assert runtime_unions("from __future__ import annotations\ndef f(x: int | None) -> str | None: ...\n") == []
    assert runtime_unions("x: np.ndarray | os.PathLike = None\n") == [1]
    assert runtime_unions("flags = a | b\nmode = os.O_CREAT | os.O_EXCL\nalign = Qt.AlignLeft | Qt.AlignTop\n") == []
