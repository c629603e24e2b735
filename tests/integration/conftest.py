"""Fixtures of the QGIS integration tests: a real headless QGIS, Processing, the plugin's
provider, generated rasters and the model bundle (skipped, with the reason, when not built).

Run with ``QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/integration -q``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[2]
PROCESSING_PLUGINS = Path("/usr/share/qgis/python/plugins")
DEMO_SCENE = REPO / ".cache" / "samples" / "demo_scene.tif"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if PROCESSING_PLUGINS.is_dir() and str(PROCESSING_PLUGINS) not in sys.path:
    sys.path.append(str(PROCESSING_PLUGINS))


def _load_make_geotiffs():
    spec = importlib.util.spec_from_file_location("make_geotiffs", REPO / "tests" / "data" / "make_geotiffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def qgis_app():
    """A headless QgsApplication with Processing initialised; exitQgis at the end."""
    from qgis.core import QgsApplication

    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    yield app
    Processing.deinitialize()
    app.exitQgis()


@pytest.fixture(scope="session")
def plugin(qgis_app):
    """The plugin started as qgis_process starts it (no iface), its provider registered."""
    import rs_vlm_plugin

    instance = rs_vlm_plugin.classFactory(None)
    instance.initProcessing()
    yield instance
    instance.unload()


@pytest.fixture(scope="session")
def rasters(tmp_path_factory) -> dict[str, Path]:
    """The seeded test rasters of ``tests/data/make_geotiffs.py``."""
    return _load_make_geotiffs().make_all(tmp_path_factory.mktemp("rasters"), seed=0)


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    """The default model bundle; skips the test when it has not been built yet."""
    from rs_vlm_plugin.core.bundle import default_bundle_dir

    folder = default_bundle_dir()
    if not (folder / "manifest.json").exists():
        pytest.skip(f"the model bundle is not built ({folder / 'manifest.json'} is missing); "
                    "run `python3 build.py setup` first")
    return folder


@pytest.fixture()
def project(qgis_app):
    """The current project, emptied after the test."""
    from qgis.core import QgsProject

    project = QgsProject.instance()
    yield project
    project.clear()


def raster_layer(path: Path, name: str | None = None):
    """A raster layer of a file (asserted valid)."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(path), name or path.stem, "gdal")
    assert layer.isValid(), f"QGIS cannot open {path}"
    return layer


def wait_for(condition, timeout_s: float = 120.0) -> None:
    """Process Qt events until ``condition()`` is true (fails after ``timeout_s``)."""
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s")
        QgsApplication.processEvents()
        time.sleep(0.01)


class MinimalIface:
    """The part of QgisInterface the plugin uses, built from real QGIS and Qt widgets.

    Not a mock: the main window, map canvas, message bar and menus are the real classes;
    only QGIS's application shell around them is missing.
    """

    def __init__(self) -> None:
        from qgis.gui import QgsMapCanvas, QgsMessageBar
        from qgis.PyQt.QtWidgets import QMainWindow, QMenu

        self.window = QMainWindow()
        self.canvas = QgsMapCanvas(self.window)
        self.window.setCentralWidget(self.canvas)
        self.bar = QgsMessageBar(self.window)
        self.raster_menu = QMenu("&Raster", self.window)
        self.plugin_menus: dict[str, QMenu] = {}
        self.active_layer = None

    def mainWindow(self):  # noqa: N802 - QgisInterface naming
        return self.window

    def mapCanvas(self):  # noqa: N802
        return self.canvas

    def messageBar(self):  # noqa: N802
        return self.bar

    def activeLayer(self):  # noqa: N802
        return self.active_layer

    def addToolBar(self, name: str):  # noqa: N802
        return self.window.addToolBar(name)

    def addDockWidget(self, area, dock) -> None:  # noqa: N802
        self.window.addDockWidget(area, dock)

    def removeDockWidget(self, dock) -> None:  # noqa: N802
        self.window.removeDockWidget(dock)

    def addPluginToRasterMenu(self, name: str, action) -> None:  # noqa: N802
        if name not in self.plugin_menus:
            self.plugin_menus[name] = self.raster_menu.addMenu(name)
        self.plugin_menus[name].addAction(action)

    def removePluginRasterMenu(self, name: str, action) -> None:  # noqa: N802
        menu = self.plugin_menus.get(name)
        if menu is not None:
            menu.removeAction(action)
            if menu.isEmpty():
                self.raster_menu.removeAction(menu.menuAction())
                del self.plugin_menus[name]

    def messages(self) -> list[str]:
        """Texts of the message bar's items."""
        return [item.text() for item in self.bar.items()]


@pytest.fixture()
def iface(qgis_app):
    """A fresh :class:`MinimalIface`."""
    shell = MinimalIface()
    yield shell
    shell.window.deleteLater()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: runs the full model export (tens of seconds)")


def caption_records(source: str = "scene") -> list:
    """Caption records of a made-up 256 m scene in EPSG:26914: the whole view, 4 regions, 16 tiles."""
    from rs_vlm_plugin.core.geometry import Extent
    from rs_vlm_plugin.core.records import CaptionRecord

    whole = Extent(500000.0, 4099744.0, 500256.0, 4100000.0)
    records = [CaptionRecord("global", 0, whole, 1.14, "A town beside fields.", [("town", 0.6)], 0.6, 0.5, source)]
    for i, quadrant in enumerate(whole.quadrants()):
        records.append(CaptionRecord("region", 1, quadrant, 0.57, f"Region {i}.", [("field", 0.4)], 0.4, 0.3, source))
        for j, tile in enumerate(quadrant.quadrants()):
            records.append(CaptionRecord("object", 2, tile, 0.29, f"Tile {i}.{j}.", [("house", 0.3)], 0.3, 0.2, source))
    return records
