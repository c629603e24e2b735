"""The plugin inside the real QGIS desktop application (under a virtual X server).

QGIS is started with ``--code`` running a script that loads the plugin the way the Plugin
Manager does (``qgis.utils.loadPlugin`` / ``startPlugin`` with the real QgisInterface),
checks the toolbar, panel and provider, optionally triggers "Describe visible extent" on a
raster, unloads the plugin and writes what it saw to a JSON file. Skipped where ``xvfb-run``
or the QGIS binary is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

QGIS_BIN = shutil.which("qgis.bin") or shutil.which("qgis")
XVFB_RUN = shutil.which("xvfb-run")
pytestmark = pytest.mark.skipif(QGIS_BIN is None or XVFB_RUN is None,
                                reason="the QGIS desktop application or xvfb-run is not installed")

SCRIPT = r'''
import json, os, time, traceback
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, loadPlugin, plugins, startPlugin, unloadPlugin

RESULT = os.environ["RSVLM_RESULT"]
RASTER = os.environ.get("RSVLM_RASTER", "")
seen = {}
state = {}


def finish():
    try:
        seen["unload"] = unloadPlugin("rs_vlm_plugin")
        seen["provider_after_unload"] = QgsApplication.processingRegistry().providerById("rsvlm") is not None
        seen["toolbar_after_unload"] = bool([t for t in iface.mainWindow().findChildren(type(state["toolbar"]))
                                             if t.objectName() == "RsVlmToolbar" and t.isVisible()])
    except Exception:
        seen["error"] = traceback.format_exc()
    with open(RESULT, "w") as f:
        json.dump(seen, f)
    QgsProject.instance().clear()
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(0, iface.actionExit().trigger)


def poll():
    plugin = plugins["rs_vlm_plugin"]
    if plugin.task is not None and time.monotonic() - state["start"] < 240:
        QTimer.singleShot(200, poll)
        return
    root = QgsProject.instance().layerTreeRoot()
    seen["groups"] = [g.name() for g in root.children() if g.name().startswith("RS-VLM")]
    seen["layers"] = [l.name() for l in QgsProject.instance().mapLayers().values()]
    seen["dock_results"] = plugin.dock.results_list.count()
    seen["messages"] = [item.text() for item in iface.messageBar().items()]
    finish()


def start():
    try:
        seen["load"] = loadPlugin("rs_vlm_plugin")
        seen["start"] = startPlugin("rs_vlm_plugin")
        plugin = plugins["rs_vlm_plugin"]
        seen["provider"] = QgsApplication.processingRegistry().providerById("rsvlm") is not None
        state["toolbar"] = plugin.toolbar
        seen["toolbar_actions"] = [a.text() for a in plugin.toolbar.actions()]
        seen["dock"] = plugin.dock is not None and plugin.dock.parent() is iface.mainWindow()
        if RASTER:
            # a project file in the test folder, so the run's GeoPackage is written beside it
            QgsProject.instance().setFileName(os.path.join(os.path.dirname(RESULT), "project.qgz"))
            layer = QgsRasterLayer(RASTER, "scene", "gdal")
            QgsProject.instance().addMapLayer(layer)
            iface.setActiveLayer(layer)
            iface.mapCanvas().setDestinationCrs(layer.crs())
            iface.mapCanvas().setExtent(layer.extent())
            iface.mapCanvas().refresh()
            plugin.dock.budget_spin.setValue(4)
            plugin.describe_action.trigger()
            seen["task_started"] = plugin.task is not None
            state["start"] = time.monotonic()
            QTimer.singleShot(200, poll)
            return
    except Exception:
        seen["error"] = traceback.format_exc()
    finish()


QTimer.singleShot(500, start)
'''


def run_desktop(tmp_path: Path, raster: Path | None = None) -> dict:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "rs_vlm_plugin").symlink_to(REPO / "rs_vlm_plugin", target_is_directory=True)
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    result = tmp_path / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}  # a real (virtual) display
    env.update(QGIS_PLUGINPATH=str(plugins), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               RSVLM_RESULT=str(result), RSVLM_RASTER=str(raster or ""),
               PYTHONPATH=os.pathsep.join([sysconfig.get_paths()["purelib"]]
                                          + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
    # A session of its own, so a QGIS that hangs is killed with its X server.
    child = subprocess.Popen([XVFB_RUN, "-a", QGIS_BIN, "--nologo", "--noversioncheck", "--code", str(script)],
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        log = child.communicate(timeout=400)[0][-3000:]
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        log = "QGIS did not exit within 400 s: " + child.communicate()[0][-3000:]
    assert result.exists(), f"the script wrote no result; QGIS said:\n{log}"
    seen = json.loads(result.read_text())
    assert "error" not in seen, seen["error"]
    return seen


def test_plugin_loads_and_unloads_in_qgis(tmp_path):
    seen = run_desktop(tmp_path)
    assert seen["load"] and seen["start"] and seen["provider"] and seen["dock"]
    assert seen["toolbar_actions"] == ["Describe visible extent", "RS-VLM panel"]
    assert seen["unload"] and not seen["provider_after_unload"] and not seen["toolbar_after_unload"]


def test_describe_visible_extent_in_qgis(tmp_path, rasters, bundle_dir):
    seen = run_desktop(tmp_path, rasters["scene"])
    assert seen["task_started"]
    assert len(seen["groups"]) == 1 and seen["groups"][0].startswith("RS-VLM describe")
    assert {"Global caption", "Region captions", "Object captions"} <= set(seen["layers"])
    assert seen["dock_results"] > 0
    assert any("Results:" in text for text in seen["messages"]), seen["messages"]
    assert list((tmp_path / "rs_vlm_runs").glob("rs_vlm_describe_*.gpkg"))
    assert seen["unload"] and not seen["provider_after_unload"]
