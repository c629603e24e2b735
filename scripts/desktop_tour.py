"""A tour of the RS-VLM panel inside the real QGIS desktop, run by ``qgis --code``.

Loads the plugin the way the Plugin Manager does, opens a raster, then drives the panel like a
user: picks a mode, types a query, presses Run, waits for the layers, and saves a screenshot
of the main window after each step. Writes what it saw (layers, panel texts, timings) to JSON.
Used by the desktop test and by ``python3 build.py screenshots``.

Environment:
    RSVLM_RESULT: The JSON file to write.
    RSVLM_RASTER: The raster to open (empty: only load and unload the plugin).
    RSVLM_SHOTS: A folder for screenshots (empty: none).
    RSVLM_STEPS: Comma-separated steps among describe, search, index, search_index, classify, ask;
        a step given twice is recorded the second time as "<step>_again" (a warm run).
    RSVLM_MAX_TILES: The panel's tile budget.
"""

import json
import os
import time
import traceback

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, loadPlugin, plugins, startPlugin, unloadPlugin

RESULT = os.environ["RSVLM_RESULT"]
RASTER = os.environ.get("RSVLM_RASTER", "")
SHOTS = os.environ.get("RSVLM_SHOTS", "")
STEPS = [s for s in os.environ.get("RSVLM_STEPS", "describe,search").split(",") if s]
QUERIES = {"search": "a paved road through a forest", "search_index": "a paved road through a forest",
           "classify": "forest, road, bare soil, water", "ask": "How much of the area is forest?"}
MODES = {"search_index": "search"}
TIMEOUT_S = 300

seen = {"steps": {}}
state = {"queue": list(STEPS)}


def shot(name):
    if not SHOTS:
        return
    os.makedirs(SHOTS, exist_ok=True)
    QgsApplication.processEvents()
    iface.mapCanvas().refreshAllLayers()
    iface.mapCanvas().waitWhileRendering()
    path = os.path.join(SHOTS, f"{name}.jpg")
    iface.mainWindow().grab().save(path, "JPG", 82)  # aerial imagery: a JPEG is a tenth of a PNG
    seen.setdefault("shots", []).append(path)


def finish():
    try:
        seen["unload"] = unloadPlugin("rs_vlm_plugin")
        seen["provider_after_unload"] = QgsApplication.processingRegistry().providerById("rsvlm") is not None
        seen["toolbar_after_unload"] = bool([t for t in iface.mainWindow().findChildren(type(state["toolbar"]))
                                             if t.objectName() == "RsVlmToolbar" and t.isVisible()])
    except Exception:
        seen["error"] = traceback.format_exc()
    with open(RESULT, "w") as f:
        json.dump(seen, f, indent=1)
    QgsProject.instance().clear()
    QgsProject.instance().setDirty(False)
    QTimer.singleShot(0, iface.actionExit().trigger)


def next_step():
    plugin = plugins["rs_vlm_plugin"]
    dock = plugin.dock
    if not state["queue"]:
        finish()
        return
    step = state["queue"].pop(0)
    key = step if step not in seen["steps"] else f"{step}_again"
    state["step"], state["key"] = step, key
    mode = MODES.get(step, step)
    for group in QgsProject.instance().layerTreeRoot().children():  # earlier runs out of the picture
        group.setItemVisibilityChecked(group.name() == "scene")
        group.setExpanded(False)
    try:
        if step != "index":
            dock.set_mode(mode)
        dock.query_edit.setText(QUERIES.get(step, ""))
        state["clicked"] = time.perf_counter()
        (dock.index_button if step == "index" else dock.run_button).click()
        seen["steps"][key] = {"task_started": plugin.task is not None,
                               "from_index": bool(plugin.task is not None and plugin.task.request.index_path
                                                  and step != "index")}
        QTimer.singleShot(100, poll)
    except Exception:
        seen["error"] = traceback.format_exc()
        finish()


def poll():
    plugin = plugins["rs_vlm_plugin"]
    step, key = state["step"], state["key"]
    if plugin.task is not None and time.perf_counter() - state["clicked"] < TIMEOUT_S:
        QTimer.singleShot(50, poll)
        return
    dock = plugin.dock
    record = seen["steps"][key]
    record["click_to_layers_s"] = round(time.perf_counter() - state["clicked"], 3)
    record["timings"] = plugin.last_timings
    record["status"] = dock.status_label.text()
    record["answer"] = dock.answer_label.text()
    record["results"] = dock.results_list.count()
    record["layers"] = [layer.name() for layer in plugin.result_layers]
    root = QgsProject.instance().layerTreeRoot()
    record["groups"] = [g.name() for g in root.children() if "RS-VLM" in g.name()]
    record["messages"] = [item.text() for item in iface.messageBar().items()]
    iface.messageBar().clearWidgets()
    if plugin.result_layers and step in ("describe", "search", "search_index", "classify", "ask"):
        iface.setActiveLayer(plugin.result_layers[0])
    if step in ("search", "search_index") and dock.results_list.count():
        dock.results_list.setCurrentRow(0)
        dock.results_list.itemClicked.emit(dock.results_list.item(0))  # zoom to and flash the best hit
        QTimer.singleShot(400, lambda: after_zoom(key))
        return
    shot(key)
    QTimer.singleShot(200, next_step)


def after_zoom(key):
    shot(key)
    iface.mapCanvas().setExtent(state["layer"].extent())
    iface.mapCanvas().refresh()
    QTimer.singleShot(200, next_step)


def start():
    try:
        seen["load"] = loadPlugin("rs_vlm_plugin")
        seen["start"] = startPlugin("rs_vlm_plugin")
        plugin = plugins["rs_vlm_plugin"]
        seen["provider"] = QgsApplication.processingRegistry().providerById("rsvlm") is not None
        state["toolbar"] = plugin.toolbar
        seen["toolbar_actions"] = [a.text() for a in plugin.toolbar.actions()]
        seen["dock"] = plugin.dock is not None and plugin.dock.parent() is iface.mainWindow()
        if not RASTER:
            finish()
            return
        iface.mainWindow().resize(1500, 950)
        # a project file in the output folder, so every run's GeoPackage is written beside it
        QgsProject.instance().setFileName(os.path.join(os.path.dirname(RESULT), "project.qgz"))
        layer = QgsRasterLayer(RASTER, "scene", "gdal")
        QgsProject.instance().addMapLayer(layer)
        state["layer"] = layer
        iface.setActiveLayer(layer)
        iface.mapCanvas().setDestinationCrs(layer.crs())
        iface.mapCanvas().setExtent(layer.extent())
        iface.mapCanvas().refresh()
        plugin.dock_action.setChecked(True)
        plugin.dock.layer_combo.setLayer(layer)
        plugin.dock.budget_spin.setValue(int(os.environ.get("RSVLM_MAX_TILES", "24")))
        QTimer.singleShot(500, next_step)
    except Exception:
        seen["error"] = traceback.format_exc()
        finish()


QTimer.singleShot(500, start)
