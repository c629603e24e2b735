"""The QGIS plugin: toolbar, menu, panel and Processing provider.

Works with a full QGIS interface, a minimal one (only what it offers is used) and none at all
(``qgis_process`` passes None: then only the Processing provider is added).
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMapLayerType,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from ..core.dris import PlanConfig
from ..core.errors import RsVlmError
from ..core.pipeline import JobConfig
from .processing.provider import ICON_PATH, RsVlmProvider

MENU = "&RS-VLM"
RUNS_FOLDER = "rs_vlm_runs"


def output_path(kind: str, project: QgsProject | None = None, when: datetime | None = None) -> Path:
    """Where a panel/toolbar run writes its GeoPackage.

    Beside the project file when the project is saved (``<project folder>/rs_vlm_runs``), in
    the system's temporary folder otherwise; one file per run, named by kind and time.
    """
    project = project or QgsProject.instance()
    home = project.homePath() if project.fileName() else ""
    folder = Path(home) / RUNS_FOLDER if home else Path(tempfile.gettempdir()) / RUNS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    stamp = (when or datetime.now()).strftime("%Y%m%d_%H%M%S_%f")
    return folder / f"rs_vlm_{kind}_{stamp}.gpkg"


class RsVlmPlugin:
    """The RS-VLM plugin object QGIS keeps while the plugin is active.

    Args:
        iface: The QgisInterface, or None (Processing only).
    """

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: RsVlmProvider | None = None
        self.toolbar = None
        self.dock = None
        self.describe_action: QAction | None = None
        self.dock_action: QAction | None = None
        self.task = None
        self._menu_actions: list[QAction] = []

    # QGIS entry points --------------------------------------------------------------------

    def initProcessing(self) -> None:  # noqa: N802 - QGIS naming
        """Register the Processing provider (once).

        When a provider with the id "rsvlm" is already registered (another copy of the plugin)
        this one keeps none, so its unload leaves the other's alone.
        """
        if self.provider is None:
            provider = RsVlmProvider()
            if QgsApplication.processingRegistry().addProvider(provider):
                self.provider = provider
            else:
                QgsMessageLog.logMessage("A Processing provider with the id rsvlm is already registered; "
                                         "this copy of RS-VLM adds none.", "RS-VLM", Qgis.Warning)

    def initGui(self) -> None:  # noqa: N802 - QGIS naming
        """Add the provider, the toolbar, the menu entries and the (hidden) panel."""
        self.initProcessing()
        if self.iface is None:
            return
        window = self._main_window()
        icon = QIcon(str(ICON_PATH))
        self.describe_action = QAction(icon, "Describe visible extent", window)
        self.describe_action.setObjectName("RsVlmDescribeVisibleExtent")
        self.describe_action.setToolTip("RS-VLM: caption the visible part of the active raster layer")
        self.describe_action.triggered.connect(self.describe_visible_extent)
        self.dock_action = QAction(icon, "RS-VLM panel", window)
        self.dock_action.setObjectName("RsVlmTogglePanel")
        self.dock_action.setCheckable(True)
        self.dock_action.toggled.connect(self._set_dock_visible)

        if hasattr(self.iface, "addToolBar"):
            self.toolbar = self.iface.addToolBar("RS-VLM")
            self.toolbar.setObjectName("RsVlmToolbar")
            self.toolbar.addAction(self.describe_action)
            self.toolbar.addAction(self.dock_action)
        add_to_menu = getattr(self.iface, "addPluginToRasterMenu", None) or getattr(self.iface, "addPluginToMenu", None)
        if add_to_menu is not None:
            for action in (self.describe_action, self.dock_action):
                add_to_menu(MENU, action)
                self._menu_actions.append(action)

        from .dock import RsVlmDock

        self.dock = RsVlmDock(window)
        self.dock.describeRequested.connect(self.describe_from_dock)
        self.dock.searchRequested.connect(self.search_from_dock)
        self.dock.cancelRequested.connect(self.cancel)
        self.dock.resultActivated.connect(self.zoom_to_result)
        if hasattr(self.iface, "addDockWidget"):
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.dock.visibilityChanged.connect(self.dock_action.setChecked)

    def unload(self) -> None:
        """Cancel a running job and remove everything the plugin added."""
        self.cancel()
        if self.iface is not None:
            remove_from_menu = (getattr(self.iface, "removePluginRasterMenu", None)
                                if hasattr(self.iface, "addPluginToRasterMenu")
                                else getattr(self.iface, "removePluginMenu", None))
            for action in self._menu_actions:
                if remove_from_menu is not None:
                    remove_from_menu(MENU, action)
            self._menu_actions.clear()
            if self.dock is not None:
                if hasattr(self.iface, "removeDockWidget"):
                    self.iface.removeDockWidget(self.dock)
                self.dock.deleteLater()
                self.dock = None
            if self.toolbar is not None:
                window = self._main_window()
                if window is not None:
                    window.removeToolBar(self.toolbar)  # at once; deleteLater waits for the event loop
                self.toolbar.deleteLater()
                self.toolbar = None
            for action in (self.describe_action, self.dock_action):
                if action is not None:
                    action.deleteLater()
            self.describe_action = self.dock_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    # Actions ------------------------------------------------------------------------------

    def describe_visible_extent(self) -> None:
        """Describe the canvas's visible extent of the active raster layer (or the panel's)."""
        layer = self._active_raster()
        if layer is None:
            self._message("Select a raster layer in the Layers panel (or in the RS-VLM panel) first.", Qgis.Warning)
            return
        self.start_job("describe", layer)

    def describe_from_dock(self) -> None:
        """Describe the panel's raster for the visible extent."""
        self.start_job("describe", self.dock.current_layer() if self.dock else None)

    def search_from_dock(self, query: str) -> None:
        """Search the panel's raster for the query, in the visible extent."""
        self.start_job("search", self.dock.current_layer() if self.dock else None, query)

    def cancel(self) -> None:
        """Ask the running job to stop (it stops between batches)."""
        if self.task is not None:
            try:
                self.task.cancel()
            except RuntimeError:  # the C++ task is already gone
                self.task = None

    def start_job(self, kind: str, layer, query: str = "", extent=None, max_tiles: int | None = None,
                  output=None, model_dir=None):
        """Build the job on the main thread and run it as a background task.

        Args:
            kind: "describe" or "search".
            layer: The raster layer.
            query: Search text (search only).
            extent: Core Extent in the layer's CRS; default the canvas's visible extent
                (the whole layer without a canvas).
            max_tiles: DRIS budget; default the panel's value.
            output: GeoPackage path; default :func:`output_path`.
            model_dir: Model bundle folder; default the plugin's model.

        Returns:
            The started :class:`~.task.RsVlmTask`, or None when the inputs were not valid
            (the reason is shown in the message bar).
        """
        from .task import RsVlmTask

        if self.task is not None and self._task_alive():
            self._message("An RS-VLM job is already running; wait for it or cancel it.", Qgis.Warning)
            return None
        try:
            request = self._build_request(kind, layer, query, extent, max_tiles, output, model_dir)
        except RsVlmError as exc:
            self._message(str(exc), Qgis.Warning)
            if self.dock is not None:
                self.dock.set_status(str(exc))
            return None
        task = RsVlmTask(request, self.iface)
        task.progressChanged.connect(self._on_progress)
        task.stageChanged.connect(self._on_stage)
        task.jobFinished.connect(self._on_finished)
        task.jobFailed.connect(self._on_failed)
        self.task = task  # keep a Python reference while QGIS runs it
        if self.dock is not None:
            self.dock.set_running(True)
            self.dock.set_status(f"{kind.capitalize()} {layer.name()}...")
        QgsApplication.taskManager().addTask(task)
        return task

    def zoom_to_result(self, extent, crs_wkt=None) -> None:
        """Zoom the canvas to a result's extent, given in the CRS of ``crs_wkt``."""
        canvas = self._canvas()
        if canvas is None:
            return
        from .extent import to_rectangle, transform_rectangle

        crs = QgsCoordinateReferenceSystem.fromWkt(crs_wkt) if crs_wkt else QgsCoordinateReferenceSystem()
        try:
            rect = transform_rectangle(to_rectangle(extent), crs, canvas.mapSettings().destinationCrs())
        except RsVlmError as exc:
            self._message(str(exc), Qgis.Warning)
            return
        rect.scale(1.1)
        canvas.setExtent(rect)
        canvas.refresh()

    # Internals ----------------------------------------------------------------------------

    def _build_request(self, kind, layer, query, extent, max_tiles, output, model_dir):
        from ..core.pipeline import check_query
        from .extent import canvas_extent_in_layer_crs, canvas_gsd_m
        from .source import QgsLayerSource
        from .task import JobRequest

        if layer is None or not isinstance(layer, QgsRasterLayer):
            raise RsVlmError("Choose a raster layer first; RS-VLM describes and searches raster layers only.")
        if kind == "search":
            query = check_query(query)
        canvas = self._canvas()
        if extent is None and canvas is not None:
            extent = canvas_extent_in_layer_crs(canvas, layer)
        gsd = canvas_gsd_m(canvas) if canvas is not None else None
        source = QgsLayerSource(layer, nominal_gsd_m=gsd)
        if extent is not None:
            extent = source.georef.clip(extent)  # a sentence now rather than from the task
        if max_tiles is None:
            max_tiles = self.dock.max_tiles() if self.dock is not None else PlanConfig().max_tiles
        config = JobConfig(plan=PlanConfig(max_tiles=max_tiles))
        return JobRequest(kind=kind, source=source, extent=extent, config=config, query=query,
                          model_dir=Path(model_dir) if model_dir else None,
                          output=Path(output) if output else output_path(kind))

    def _on_progress(self, percent: float) -> None:
        if self.dock is not None:
            self.dock.set_progress(percent)

    def _on_stage(self, stage: str) -> None:
        if self.dock is not None:
            self.dock.set_status(stage)

    def _on_finished(self, outcome) -> None:
        from ..core.pipeline import SearchResult
        from .layers import add_result_layers, run_group_name

        self.task = None
        query = outcome.result.query if isinstance(outcome.result, SearchResult) else ""
        if outcome.output is not None:
            add_result_layers(outcome.output, list(outcome.layers), run_group_name(outcome.request.kind, query),
                              query=query)
        if self.dock is not None:
            self.dock.set_running(False)
            self.dock.set_progress(100)
            self.dock.show_result(outcome.result)
        if isinstance(outcome.result, SearchResult):
            summary = f'{len(outcome.result.hits)} places match "{query}".'
        else:
            summary = outcome.result.global_caption
        self._message(f"{summary} Results: {outcome.output}", Qgis.Success)

    def _on_failed(self, message: str) -> None:
        self.task = None
        if self.dock is not None:
            self.dock.set_running(False)
            self.dock.set_status(message)

    def _task_alive(self) -> bool:
        try:
            return self.task.status() not in (self.task.Complete, self.task.Terminated)
        except RuntimeError:
            return False

    def _active_raster(self):
        layer = self.iface.activeLayer() if self.iface is not None and hasattr(self.iface, "activeLayer") else None
        if layer is not None and layer.type() == QgsMapLayerType.RasterLayer:
            return layer
        return self.dock.current_layer() if self.dock is not None else None

    def _canvas(self):
        return self.iface.mapCanvas() if self.iface is not None and hasattr(self.iface, "mapCanvas") else None

    def _main_window(self):
        return self.iface.mainWindow() if hasattr(self.iface, "mainWindow") else None

    def _set_dock_visible(self, visible: bool) -> None:
        if self.dock is not None and self.dock.isHidden() == visible:
            self.dock.setVisible(visible)

    def _message(self, text: str, level) -> None:
        bar = self.iface.messageBar() if self.iface is not None and hasattr(self.iface, "messageBar") else None
        if bar is not None:
            bar.pushMessage("RS-VLM", text, level=level, duration=0 if level == Qgis.Critical else 8)
        QgsMessageLog.logMessage(text, "RS-VLM", level)
