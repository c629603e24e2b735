"""The shell has none of the Qt5-only forms that QGIS's ``pyqt5_to_pyqt6`` script rewrites for QGIS 4.

The script (QGIS ``scripts/pyqt5_to_pyqt6/pyqt5_to_pyqt6.py``) rewrites: ``exec_`` calls and
definitions, ``from PyQt5...`` imports, enum members reached without their enum (``Qt.AlignLeft``
-> ``Qt.AlignmentFlag.AlignLeft``, also QGIS's own ``QgsTask.CanCancel``), deprecated enum names,
``qApp``, ``QVariant()``; and it warns about compiled resources (``resources_rc``), ``QRegExp``,
``QDesktopWidget``, ``activated[str]``. Which ``Class.Member`` is an unscoped enum member is read
from the real PyQt5 and QGIS classes here: a member whose type is an enum nested in the class.
QGIS 4 itself cannot be installed on this machine; this scan is what is checked for it.
"""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "rs_vlm_plugin"
SHELL_SOURCES = sorted([PLUGIN / "__init__.py", *(PLUGIN / "qgis_shell").rglob("*.py")])
DEPRECATED = {("Qt", "MidButton"), ("Qt", "TextColorRole"), ("Qt", "BackgroundColorRole"),
              ("QPainter", "HighQualityAntialiasing")}
WARNED_NAMES = {"resources_rc", "QRegExp", "QDesktopWidget", "qApp"}


@functools.lru_cache(maxsize=1)
def unscoped_enum_members() -> dict[tuple[str, str], str]:
    """``(class, member) -> enum`` for every enum member reachable on its class without its enum."""
    from qgis import core, gui
    from qgis.PyQt import QtCore, QtGui, QtNetwork, QtWidgets

    table: dict[tuple[str, str], str] = {}
    for module in (QtCore, QtGui, QtWidgets, QtNetwork, core, gui):
        for cls_name, cls in vars(module).items():
            if not inspect.isclass(cls) or not cls_name[:1] == "Q":
                continue
            enums = {name: value for name, value in vars(cls).items()
                     if inspect.isclass(value) and issubclass(value, int) and name[:1].isupper()}
            for enum_name, enum in enums.items():
                for member, value in vars(cls).items():
                    if member != enum_name and type(value) is enum:
                        table[(cls_name, member)] = enum_name
    return table


def qt5_only_forms(source: str, filename: str = "<source>") -> list[str]:
    """Every Qt5-only form in ``source``, as ``file:line what (the Qt6 form)``."""
    table = unscoped_enum_members()
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute) and node.attr == "exec_":
            found.append(f"{where} .exec_() (exec())")
        elif isinstance(node, ast.FunctionDef) and node.name == "exec_":
            found.append(f"{where} def exec_ (exec)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("PyQt5", "PyQt4", "sip"):
            found.append(f"{where} from {node.module} (qgis.PyQt)")
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("PyQt5", "PyQt4", "sip") for a in node.names):
            found.append(f"{where} import PyQt5 (qgis.PyQt)")
        elif isinstance(node, (ast.ImportFrom, ast.Import)) and any(a.name in WARNED_NAMES for a in node.names):
            found.append(f"{where} imports {[a.name for a in node.names if a.name in WARNED_NAMES]} (gone in Qt6)")
        elif isinstance(node, ast.Name) and node.id in WARNED_NAMES:
            found.append(f"{where} {node.id} (gone in Qt6)")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "activated":
            found.append(f"{where} activated[...] (textActivated)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "QVariant" and not node.args:
            found.append(f"{where} QVariant() (NULL)")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            key = (node.value.id, node.attr)
            if key in DEPRECATED:
                found.append(f"{where} {key[0]}.{key[1]} (deprecated, renamed in Qt6)")
            elif key in table:
                found.append(f"{where} {key[0]}.{key[1]} ({key[0]}.{table[key]}.{key[1]})")
    return found


def test_the_enum_table_comes_from_the_real_classes():
    table = unscoped_enum_members()
    assert table[("Qt", "AlignLeft")] == "AlignmentFlag"
    assert table[("QMessageBox", "Yes")] == "StandardButton"
    assert table[("QgsTask", "CanCancel")] == "Flag"
    assert len(table) > 2000


def test_the_scan_finds_each_qt5_only_form():
    sample = ("from PyQt5.QtCore import Qt\nimport sip\nfrom qgis.PyQt.QtCore import QRegExp\n"
              "label.setAlignment(Qt.AlignLeft)\nbox.exec_()\nQMessageBox.question(None, 't', 'q') == QMessageBox.Yes\n"
              "QgsTask('x', QgsTask.CanCancel)\nclass D:\n    def exec_(self): ...\ncombo.activated[str].connect(f)\n"
              "Qt.MidButton\n")
    found = qt5_only_forms(sample)
    lines = sorted({int(f.split(":")[1].split()[0]) for f in found})
    assert lines == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11], found
    assert qt5_only_forms("label.setAlignment(Qt.AlignmentFlag.AlignLeft)\nbox.exec()\n"
                          "QgsTask('x', QgsTask.Flag.CanCancel)\nx = self.Yes\n") == []


def test_the_shell_has_no_qt5_only_forms():
    found = [f for path in SHELL_SOURCES
             for f in qt5_only_forms(path.read_text(encoding="utf-8"), str(path.relative_to(PLUGIN)))]
    assert found == []


def test_the_plugin_uses_no_compiled_resources():
    assert not list(PLUGIN.rglob("*.qrc")) and not list(PLUGIN.rglob("resources_rc.py"))
