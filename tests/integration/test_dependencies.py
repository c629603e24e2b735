"""Missing dependencies in a real headless QGIS, and real pip installs.

Each QGIS run is a subprocess (``QT_QPA_PLATFORM=offscreen``) whose ``sitecustomize.py``
blocks chosen modules with a meta-path finder, so the plugin meets a Python that lacks them;
its HOME is a temporary folder, so the QGIS profile (and the plugin-private package folder in
it) is fresh. The installs run the real pip against the real package index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

from rs_vlm_plugin import deps

SYSTEM_PYTHON = Path("/usr/bin/python3")

BLOCKER_SITE = REPO / "tests" / "data" / "import_blocker"  # its sitecustomize blocks RSVLM_TEST_BLOCK

# MinimalIface and wait_for are taken from conftest.py's source: QGIS's own Python has no pytest.
START_QGIS = textwrap.dedent("""
    import ast, json, sys, time
    from qgis.core import QgsApplication
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    _conftest = {conftest!r}
    with open(_conftest, encoding="utf-8") as _stream:
        for _node in ast.parse(_stream.read()).body:
            if getattr(_node, "name", None) in ("MinimalIface", "wait_for"):
                exec(compile(ast.Module([_node], []), _conftest, "exec"))
""")


def run_qgis(tmp_path: Path, body: str, python: str = sys.executable, blocked: str = "",
             timeout: int = 600) -> dict:
    """Run ``body`` in a fresh headless QGIS; it prints one JSON line as its last output."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (tmp_path / "xdg").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BLOCKER_SITE), str(REPO)]), HOME=str(home),
               QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path / "xdg"), RSVLM_TEST_BLOCK=blocked)
    env.pop("XDG_DATA_HOME", None)
    env.pop("XDG_CONFIG_HOME", None)
    code = START_QGIS.format(conftest=str(REPO / "tests" / "integration" / "conftest.py")) + textwrap.dedent(body)
    done = subprocess.run([python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def interpreters() -> list:
    """The project venv's Python and QGIS's own (Debian's /usr/bin/python3) when present."""
    found = [pytest.param(sys.executable, id="venv")]
    if SYSTEM_PYTHON.exists() and sys.prefix != sys.base_prefix:  # in a venv: QGIS's own Python differs
        found.append(pytest.param(str(SYSTEM_PYTHON), id="qgis-python"))
    return found


@pytest.mark.parametrize("python", interpreters())
def test_missing_onnxruntime_gives_the_fallback_plugin_that_explains(tmp_path, python):
    out = run_qgis(tmp_path, """
        import rs_vlm_plugin
        from qgis.PyQt.QtWidgets import QPushButton, QToolBar
        iface = MinimalIface()
        plugin = rs_vlm_plugin.classFactory(iface)
        plugin.initGui()
        buttons = [b.text() for b in iface.bar.findChildren(QPushButton) if b.objectName() == "RsVlmInstallDependenciesButton"]
        from qgis.PyQt.QtWidgets import QLabel, QTextBrowser
        labels = [l for l in iface.bar.findChildren(QLabel) if l.objectName() == "RsVlmMessageText"]
        shown = [(l.text(), l.wordWrap(), l.isHidden()) for l in labels]
        boxes_shown = [b for b in iface.bar.items()[0].findChildren(QTextBrowser) if not b.isHidden()]
        menu = iface.plugin_menus.get("&RS-VLM")
        result = {
            "plugin": type(plugin).__name__,
            "messages": iface.messages(),
            "buttons": buttons,
            "labels": shown,
            "boxes_shown": len(boxes_shown),
            "menu": [a.text() for a in menu.actions()] if menu else [],
            "toolbar": [a.text() for a in iface.window.findChild(QToolBar, "RsVlmToolbar").actions()],
            "core_loaded": sorted(m for m in sys.modules if m.startswith("rs_vlm_plugin.core")),
            "onnxruntime_loaded": "onnxruntime" in sys.modules,
        }
        plugin.unload()
        result["menu_after_unload"] = "&RS-VLM" in iface.plugin_menus
        print(json.dumps(result))
    """, python=python, blocked="onnxruntime")
    assert out["plugin"] == "MissingDependenciesPlugin"
    assert len(out["messages"]) == 1
    message = out["messages"][0]
    assert message.startswith("RS-VLM cannot start yet.")
    assert "onnxruntime is not installed: it runs the vision-language model" in message
    assert 'Click "Install dependencies"' in message
    assert out["buttons"] == ["Install dependencies"]
    assert out["labels"] == [[message, True, False]]  # the whole text, wrapped, in the bar
    assert out["boxes_shown"] == 0  # not the item's two-line text box
    assert out["menu"] == ["Install RS-VLM dependencies", "Check RS-VLM dependencies"]
    assert out["toolbar"] == ["Install RS-VLM dependencies"]
    assert out["core_loaded"] == [] and out["onnxruntime_loaded"] is False
    assert out["menu_after_unload"] is False


def test_the_normal_plugin_loads_when_nothing_is_missing(tmp_path):
    out = run_qgis(tmp_path, """
        import rs_vlm_plugin
        plugin = rs_vlm_plugin.classFactory(None)
        print(json.dumps({"plugin": type(plugin).__name__}))
    """)
    assert out["plugin"] == "RsVlmPlugin"


def test_install_button_installs_into_the_private_folder(tmp_path):
    """The message bar's button runs pip in a QgsTask; the package lands in the profile's folder."""
    out = run_qgis(tmp_path, """
        import dataclasses
        from qgis.PyQt.QtWidgets import QPushButton
        from rs_vlm_plugin import deps
        from rs_vlm_plugin.qgis_shell.deps_install import private_folder
        from rs_vlm_plugin.qgis_shell.missing_deps import MissingDependenciesPlugin
        tqdm = next(r for r in deps.REQUIREMENTS if r.import_name == "tqdm")
        report = deps.check([dataclasses.replace(tqdm, required=True)])
        iface = MinimalIface()
        plugin = MissingDependenciesPlugin(iface, report)
        plugin.initGui()
        button = next(b for b in iface.bar.findChildren(QPushButton) if b.objectName() == "RsVlmInstallDependenciesButton")
        button.click()
        task = plugin.task
        progress = []
        task.progressChanged.connect(progress.append)
        wait_for(lambda: plugin.task is None, timeout_s=540)
        folder = private_folder()
        print(json.dumps({"status": report.state("tqdm").status, "messages": iface.messages(),
                          "folder": str(folder), "installed": sorted(p.name for p in folder.iterdir()),
                          "progress": max(progress, default=None)}))
    """, blocked="tqdm")
    assert out["status"] == deps.MISSING
    assert out["folder"].startswith(str(tmp_path / "home"))
    assert out["folder"].endswith(f"rs_vlm_deps/py{sys.version_info[0]}.{sys.version_info[1]}")
    done = f"The packages were installed into {out['folder']}; restart QGIS (or reload the RS-VLM plugin)"
    assert any(m.startswith(done) for m in out["messages"]), out["messages"]
    assert "tqdm" in out["installed"]
    assert out["progress"] is not None and out["progress"] > 0


def test_real_install_of_a_pinned_package_with_the_host_constraints(tmp_path):
    target = tmp_path / "rs_vlm_deps" / "py"
    lines: list[str] = []
    pins = deps.host_constraints(exclude=["tqdm"])
    assert "numpy" in pins
    result = deps.install(["tqdm==4.70.1"], target, constraints=pins, on_line=lines.append)
    assert result.ok, f"{result.message}\n{result.last_lines()}"
    assert "--constraint" in result.command and lines == result.lines
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import tqdm; "
            "print(tqdm.__version__); print(tqdm.__file__)")
    done = subprocess.run([deps.find_python(), "-c", code, str(target)], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    version, where = done.stdout.split()
    assert version == "4.70.1"
    assert Path(where).is_relative_to(target)


def test_a_conflict_with_the_host_numpy_is_refused_with_a_sentence(tmp_path):
    conflict = deps.install(["shapely==2.2.0"], tmp_path / "site", constraints={"numpy": "1.24.2"})
    assert not conflict.ok
    assert conflict.message.startswith("The packages RS-VLM needs conflict with versions QGIS already has")
    assert "numpy>=1.26" in conflict.message


def test_describing_a_raster_in_qgis_never_imports_torch(tmp_path, bundle_dir):
    out = run_qgis(tmp_path, f"""
        import importlib.util
        sys.path.append("/usr/share/qgis/python/plugins")
        spec = importlib.util.spec_from_file_location("make_geotiffs", {str(REPO / "tests" / "data" / "make_geotiffs.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        scene = module.make_all({str(tmp_path / "rasters")!r}, seed=0)["scene"]
        from processing.core.Processing import Processing
        Processing.initialize()
        import processing
        import rs_vlm_plugin
        plugin = rs_vlm_plugin.classFactory(None)
        plugin.initProcessing()
        result = processing.run("rsvlm:caption_raster", {{"INPUT": str(scene), "MAX_TILES": 8,
                                                        "OUTPUT": {str(tmp_path / "captions.gpkg")!r}}})
        print(json.dumps({{"caption": result["GLOBAL_CAPTION"], "plugin": type(plugin).__name__,
                          "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}}))
    """)
    assert out["plugin"] == "RsVlmPlugin"
    assert out["caption"]
    assert out["torch"] == []


def test_dependencies_dialog_shows_the_report(qgis_app, iface):
    from qgis.PyQt.QtWidgets import QDialog

    from rs_vlm_plugin.qgis_shell.deps_dialog import COLUMNS, DependenciesDialog, open_dependencies_dialog

    dialog = open_dependencies_dialog(None, iface)
    try:
        assert isinstance(dialog, QDialog) and dialog.isVisible() and dialog.parent() is iface.mainWindow()
        table = dialog.table
        assert [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())] == list(COLUMNS)
        rows = {table.item(r, 0).text(): table.item(r, 1).text() for r in range(table.rowCount())}
        assert rows["onnxruntime"] == deps.OK and rows["numpy"] == deps.OK
        assert dialog.summary.text() == "All the Python packages RS-VLM needs are installed."
        assert not dialog.install_button.isEnabled()
    finally:
        dialog.close()

    broken = deps.Requirement("rsvlm_fake_not_there", "rsvlm-fake", "rsvlm-fake==1.0", None, None,
                              "is a test package")
    missing = DependenciesDialog(None, deps.check([broken]))
    try:
        assert missing.table.item(0, 1).text() == deps.MISSING
        assert "No module named 'rsvlm_fake_not_there'" in missing.table.item(0, 4).text()
        assert "rsvlm-fake is not installed: it is a test package." in missing.summary.text()
        assert missing.install_button.isEnabled()
    finally:
        missing.close()


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs QGIS's own Python at /usr/bin/python3")
def test_qgis_python_installs_what_it_lacks_then_the_plugin_captions(tmp_path, bundle_dir):
    """The whole story in QGIS's own Python: fallback plugin, Install, reload, caption (downloads ~60 MB)."""
    out = run_qgis(tmp_path, f"""
        sys.path.append("/usr/share/qgis/python/plugins")
        import rs_vlm_plugin
        from rs_vlm_plugin import deps
        iface = MinimalIface()
        fallback = rs_vlm_plugin.classFactory(iface)
        missing = [s.requirement.pip_name for s in getattr(fallback, "report", deps.check()).to_install]
        if type(fallback).__name__ != "MissingDependenciesPlugin":
            print(json.dumps({{"skip": "QGIS's Python already has every package"}}))
            sys.exit(0)
        fallback.initGui()
        task = fallback.install()
        wait_for(lambda: fallback.task is None, timeout_s=540)
        fallback.unload()
        plugin = rs_vlm_plugin.classFactory(None)  # what "reload the plugin" does
        from processing.core.Processing import Processing
        Processing.initialize()
        import processing
        import importlib.util
        spec = importlib.util.spec_from_file_location("make_geotiffs", {str(REPO / "tests" / "data" / "make_geotiffs.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        scene = module.make_all({str(tmp_path / "rasters")!r}, seed=0)["scene"]
        plugin.initProcessing()
        result = processing.run("rsvlm:caption_raster", {{"INPUT": str(scene), "MAX_TILES": 8,
                                                        "OUTPUT": {str(tmp_path / "captions.gpkg")!r}}})
        import numpy
        print(json.dumps({{"missing": missing, "messages": iface.messages(), "plugin": type(plugin).__name__,
                          "caption": result["GLOBAL_CAPTION"], "numpy": numpy.__file__,
                          "onnxruntime": sys.modules["onnxruntime"].__file__}}))
    """, python=str(SYSTEM_PYTHON))
    if "skip" in out:
        pytest.skip(out["skip"])
    assert "onnxruntime" in out["missing"]
    assert any(m.startswith("The packages were installed into") for m in out["messages"]), out["messages"]
    assert out["plugin"] == "RsVlmPlugin" and out["caption"]
    assert "rs_vlm_deps" not in out["numpy"], "the private folder must not shadow QGIS's NumPy"
    assert "rs_vlm_deps" in out["onnxruntime"]


def test_the_installer_shows_progress_while_pip_is_silent_and_never_goes_back(qgis_app):
    """pip prints nothing countable while it waits to retry a download: the bar still moves."""
    import dataclasses

    from rs_vlm_plugin.qgis_shell import deps_install

    tqdm = next(r for r in deps.REQUIREMENTS if r.import_name == "tqdm")
    task = deps_install.InstallDependenciesTask(deps.check([dataclasses.replace(tqdm, required=True)]))
    task._started -= deps_install.CREEP_S  # a minute of silence (pip backing off before a retry)
    assert task._poll() is False
    assert 18.0 < task.progress() <= 30.0
    before = task.progress()
    task._line("WARNING: Retrying (Retry(total=4, connect=None, read=None)) after connection broken")
    task._line("Collecting tqdm")  # 80 * (1 - 0.85) = 12 %, under what the bar shows: it stays
    assert task.progress() == before
    task._line("Installing collected packages: tqdm")
    assert task.progress() == 90.0
