"""The QGIS plugin: toolbar, menu, panel and Processing provider.

Works with a full QGIS interface, a minimal one (only what it offers is used) and none at all
(``qgis_process`` passes None: then only the Processing provider is added).
"""

from __future__ import annotations

import time
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapLayerType,
    QgsMessageLog,
    QgsProject,
    QgsRasterLayer,
    QgsTask,
)
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QFileDialog

from ..core.bundle import RuntimeOptions, available_providers
from ..core.planning.dris import PlanConfig
from ..core.errors import RsVlmError
from ..core.jobs.config import JobConfig
from ..core.locate.boxes import BoxConfig
from .layers import filter_by_score
from .model_actions import ModelActions
from .outputs import ensure_writable_folder, run_output_path
from .processing.constants import ICON_PATH
from .processing.provider import RsVlmProvider
from .settings import PluginSettings, available_models, chosen_model_dir

MENU = "&RS-VLM"
INDEX_FOLDER = "indexes"


class RsVlmPlugin(ModelActions):
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
        self.deps_action: QAction | None = None
        self.settings_action: QAction | None = None
        self.task = None
        self.result_layers: list = []
        self.last_timings: dict[str, float] = {}
        self._started = 0.0
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
                                         "this copy of RS-VLM adds none.", "RS-VLM", Qgis.MessageLevel.Warning)

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
        self.deps_action = QAction("Check dependencies…", window)
        self.deps_action.setObjectName("RsVlmDependencies")
        self.deps_action.triggered.connect(self.show_dependencies)
        self.settings_action = QAction("Settings…", window)
        self.settings_action.setObjectName("RsVlmSettings")
        self.settings_action.triggered.connect(self.show_settings)

        if hasattr(self.iface, "addToolBar"):
            self.toolbar = self.iface.addToolBar("RS-VLM")
            self.toolbar.setObjectName("RsVlmToolbar")
            self.toolbar.addAction(self.describe_action)
            self.toolbar.addAction(self.dock_action)
        add_to_menu = getattr(self.iface, "addPluginToRasterMenu", None) or getattr(self.iface, "addPluginToMenu", None)
        if add_to_menu is not None:
            for action in (self.describe_action, self.dock_action, self.settings_action, self.deps_action):
                add_to_menu(MENU, action)
                self._menu_actions.append(action)

        from .dock import RsVlmDock

        settings = PluginSettings.load()
        self.dock = RsVlmDock(window, available_models(settings),
                              cuda_available="CUDAExecutionProvider" in available_providers())
        self._apply_settings(settings)
        self.dock.runRequested.connect(self.run_from_dock)
        self.dock.indexRequested.connect(self.run_from_dock)
        self.dock.cancelRequested.connect(self.cancel)
        self.dock.resultActivated.connect(self.zoom_to_result)
        self.dock.thresholdChanged.connect(self.filter_results)
        self.dock.importRequested.connect(self.import_model)
        self.dock.downloadRequested.connect(self.download_model)
        self.dock.installFileRequested.connect(self.install_model_file)
        if hasattr(self.iface, "addDockWidget"):
            self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
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
            for action in (self.describe_action, self.dock_action, self.settings_action, self.deps_action):
                if action is not None:
                    action.deleteLater()
            self.describe_action = self.dock_action = self.settings_action = self.deps_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None

    # Actions ------------------------------------------------------------------------------

    def describe_visible_extent(self) -> None:
        """Describe the canvas's visible extent of the active raster layer (or the panel's)."""
        layer = self._active_raster()
        if layer is None:
            self._message("Select a raster layer in the Layers panel (or in the RS-VLM panel) first.", Qgis.MessageLevel.Warning)
            return
        self.start_job("describe", layer)

    def run_from_dock(self, request) -> None:
        """Run what the panel asks for (a :class:`~.panel_options.DockRequest`); remember its settings."""
        settings = self._remember(request)
        try:
            extent, mask = self._scope(request)
        except RsVlmError as exc:
            self._refuse(str(exc))
            return
        self.start_job(request.mode, request.layer, request.query, extent=extent, max_tiles=request.max_tiles,
                       model_dir=request.model_dir, device=request.device, show_plan=request.show_plan,
                       mask_wkb=mask, settings=settings, answers=request.answers, boxes=request.boxes)

    def show_dependencies(self) -> None:
        """The dependency report, with an installer for what is missing."""
        from .deps_dialog import open_dependencies_dialog

        open_dependencies_dialog(self._main_window(), self.iface)

    def show_settings(self, modal: bool = True):
        """The settings dialog (results folder, imported models, threads, hits kept).

        Returns:
            The dialog (already closed when ``modal``).
        """
        from .settings_dialog import SettingsDialog

        settings = PluginSettings.load()
        dialog = SettingsDialog(settings, self._main_window())
        dialog.accepted.connect(lambda: self.dock is not None and self._refresh_models(settings))
        if modal:
            dialog.exec()
        else:
            dialog.show()
        return dialog

    def cancel(self) -> None:
        """Ask the running job to stop (it stops between batches)."""
        if self.task is not None:
            try:
                self.task.cancel()
            except RuntimeError:  # the C++ task is already gone
                self.task = None

    def start_job(self, kind: str, layer, query: str = "", extent=None, max_tiles: int | None = None,
                  output=None, model_dir=None, device: str = "auto", show_plan: bool = False,
                  mask_wkb: bytes | None = None, settings: PluginSettings | None = None,
                  answers: str = "auto", boxes: BoxConfig | None = None):
        """Build the job on the main thread and run it as a background task.

        Args:
            kind: "describe", "search", "classify", "ask" or "index".
            layer: The raster layer.
            query: Search text, class list or question.
            extent: Core Extent in the layer's CRS; default the canvas's visible extent
                (the whole layer without a canvas).
            max_tiles: DRIS budget; default the panel's value.
            output: GeoPackage path; default a new file in the runs folder (see :mod:`.outputs`).
            model_dir: Model bundle folder; default the model chosen in the panel (or the settings).
            device: "auto", "cpu" or "cuda".
            show_plan: Also write the DRIS quadtree as a layer.
            mask_wkb: Selected polygons in the layer's CRS (WKB): tiles that miss them are skipped.
            settings: The plugin settings (default: as stored).
            answers, boxes: How search and "where is X?" draw what they find (see :class:`JobConfig`).

        Returns:
            The started :class:`~.task.RsVlmTask`, or None when the inputs were not valid
            (the reason is shown in the message bar and the panel).
        """
        from .task import RsVlmTask

        if self.task is not None and self._task_alive():
            self._message("An RS-VLM job is already running; wait for it or cancel it.", Qgis.MessageLevel.Warning)
            return None
        settings = settings or PluginSettings.load()
        try:
            request = self._build_request(kind, layer, query, extent, max_tiles, output, model_dir, device,
                                          show_plan, mask_wkb, settings, answers, boxes)
        except RsVlmError as exc:
            self._refuse(str(exc))
            return None
        if request is None:
            return None
        task = RsVlmTask(request, self.iface)
        task.progressChanged.connect(self._on_progress)
        task.stageChanged.connect(self._on_stage)
        task.jobFinished.connect(self._on_finished)
        task.jobFailed.connect(self._on_failed)
        self.task = task  # keep a Python reference while QGIS runs it
        self._started = time.perf_counter()
        if self.dock is not None:
            self.dock.set_running(True)
            how = " (from its index)" if kind == "search" and request.index_path is not None else ""
            self.dock.set_status(f"{kind.capitalize()} {layer.name()}{how}...")
        QgsApplication.taskManager().addTask(task)
        return task

    def zoom_to_result(self, extent, crs_wkt=None) -> None:
        """Zoom the canvas to a result's extent (given in the CRS of ``crs_wkt``) and flash it."""
        from .extent import zoom_canvas_to

        canvas = self._canvas()
        problem = zoom_canvas_to(canvas, extent, crs_wkt) if canvas is not None else None
        if problem:
            self._message(problem, Qgis.MessageLevel.Warning)

    def filter_results(self, threshold: float) -> None:
        """Show only the features of the last run's layers that score at least ``threshold``."""
        at_bottom = self.dock.threshold_slider.value() == 0
        filter_by_score(self.result_layers, None if at_bottom else threshold, self.dock.outline_threshold())

    # Internals ----------------------------------------------------------------------------

    def _build_request(self, kind, layer, query, extent, max_tiles, output, model_dir, device, show_plan, mask_wkb,
                       settings: PluginSettings, answers: str = "auto", boxes: BoxConfig | None = None):
        from ..core.jobs.query import check_query
        from ..core.qa import parse_question
        from .extent import canvas_extent_in_layer_crs, canvas_gsd_m
        from .source import QgsLayerSource, layer_source_id
        from .task import JobRequest, load_bundle

        if layer is None or not isinstance(layer, QgsRasterLayer):
            raise RsVlmError("Choose a raster layer first; RS-VLM works on raster layers only.")
        if kind == "search":
            query = check_query(query)
        elif kind == "ask":
            parse_question(query)  # a sentence now rather than from the task
        canvas = self._canvas()
        if extent is None and canvas is not None:
            extent = canvas_extent_in_layer_crs(canvas, layer)
        gsd = canvas_gsd_m(canvas) if canvas is not None else None
        source = QgsLayerSource(layer, nominal_gsd_m=gsd)
        if extent is not None:
            extent = source.georef.clip(extent)  # a sentence now rather than from the task
        if max_tiles is None:
            max_tiles = self.dock.max_tiles() if self.dock is not None else PlanConfig().max_tiles
        if model_dir is None:  # the toolbar uses the model the panel (or the settings) chose
            model_dir = self.dock.model_dir() if self.dock is not None else chosen_model_dir(settings)
        config = JobConfig(plan=PlanConfig(max_tiles=max_tiles), max_hits=settings.max_hits, mask_wkb=mask_wkb,
                           answers=answers, boxes=boxes)
        options = RuntimeOptions(device=device, threads=settings.threads)
        source_id = layer_source_id(layer)
        index_path = None
        if output is None:
            folder = self._runs_folder(settings)  # asks for a folder once when the project is not saved
            if folder is None:
                return None
            if kind in ("index", "search"):
                from ..core.jobs.index import default_index_path, find_index

                bundle = load_bundle(model_dir, options)
                index_folder = ensure_writable_folder(folder / INDEX_FOLDER)
                if kind == "index":
                    index_path = default_index_path(index_folder, layer.name(), source_id, bundle)
                elif mask_wkb is None:
                    index_path = find_index(index_folder, source_id, bundle)
            if kind != "index":
                output = run_output_path(kind, QgsProject.instance(), settings)
        return JobRequest(kind=kind, source=source, extent=extent, config=config, query=query,
                          model_dir=Path(model_dir) if model_dir else None,
                          output=Path(output) if output else None, options=options, index_path=index_path,
                          source_id=source_id, show_plan=show_plan)

    def _runs_folder(self, settings: PluginSettings) -> Path | None:
        """The runs folder; asks the user once (and remembers) when the project is not saved."""
        from .outputs import runs_folder

        folder = runs_folder(QgsProject.instance(), settings)
        if folder is not None:
            return ensure_writable_folder(folder)
        chosen = QFileDialog.getExistingDirectory(
            self._main_window(), "RS-VLM: choose a folder for results (asked once; change it in the settings)")
        if not chosen:
            self._refuse("Choose a folder for the results (or save the project: results then go beside it).")
            return None
        settings.output_folder = chosen
        settings.save()
        return ensure_writable_folder(Path(chosen))

    def _scope(self, request) -> tuple[object, bytes | None]:
        """The extent (layer CRS) and mask of a panel request's scope."""
        if request.layer is None:
            raise RsVlmError("Choose a raster layer first; RS-VLM works on raster layers only.")
        if request.scope == "layer":
            from .extent import to_extent

            return to_extent(request.layer.extent()), None
        if request.scope != "selection":
            return None, None
        from .extent import selection_mask

        return selection_mask(request.mask_layer, request.layer)

    def _remember(self, request) -> PluginSettings:
        settings = PluginSettings.load()
        if request.mode in ("describe", "search", "classify", "ask"):
            settings.mode = request.mode
        settings.max_tiles, settings.scope = request.max_tiles, request.scope
        settings.device, settings.show_plan = request.device, request.show_plan
        if request.model_dir is not None:
            settings.model = Path(request.model_dir).name
        if request.mode == "classify":
            settings.classes = request.query
        elif request.query and request.mode in ("search", "ask"):
            settings.add_query(request.query)
        settings.save()
        if self.dock is not None:
            self.dock.set_history(settings.query_history)
        return settings

    def _apply_settings(self, settings: PluginSettings) -> None:
        dock = self.dock
        self._refresh_models(settings)
        dock.set_mode(settings.mode)
        dock.budget_spin.setValue(settings.max_tiles)
        dock.scope_combo.setCurrentIndex(max(0, dock.scope_combo.findData(settings.scope)))
        index = dock.device_combo.findData(settings.device)
        if index >= 0 and dock.device_combo.model().item(index).isEnabled():
            dock.device_combo.setCurrentIndex(index)
        dock.plan_check.setChecked(settings.show_plan)
        dock.set_history(settings.query_history)

    def _refuse(self, message: str) -> None:
        self._message(message, Qgis.MessageLevel.Warning)
        if self.dock is not None:
            self.dock.set_status(message)

    def _on_progress(self, percent: float) -> None:
        if self.dock is None:
            return
        from ..core.pace import estimate

        # the same estimate as the log lines of Processing and the command line (core/pace.py)
        self.dock.set_progress(percent, estimate(percent / 100.0, time.perf_counter() - self._started).remaining_s)

    def _on_stage(self, stage: str) -> None:
        if self.dock is not None:
            self.dock.set_status(stage)

    def _on_finished(self, outcome) -> None:
        from ..core.jobs.results import AnswerResult, ClassifyResult, SearchResult
        from .layers import add_result_layers, run_group_name
        from .task import IndexBuilt

        self.task = None
        result = outcome.result
        if self.dock is not None:
            self.dock.set_running(False)
            self.dock.set_progress(100)
        if isinstance(result, IndexBuilt):
            if self.dock is not None:
                self.dock.clear_results()
            text = (f"Index of {result.n_tiles} tiles saved to {result.path}; searches of this layer with this "
                    "model now answer from it.")
            self._finish_message(text, outcome)
            return
        query = outcome.request.query if outcome.request.kind != "describe" else ""
        self.result_layers = []
        if outcome.output is not None:
            name = f"{outcome.request.source.name}: " + run_group_name(outcome.request.kind, query)
            self.result_layers = add_result_layers(outcome.output, outcome.written, name, query=query)
        self.last_timings = {"job_s": outcome.seconds, "click_to_layers_s": time.perf_counter() - self._started}
        if self.dock is not None:
            self.dock.show_result(result)
            if isinstance(result, SearchResult) and outcome.request.index_path is not None:
                t = result.timings
                self.dock.set_status(f"{self.dock.status_label.text()} Answered from the layer's index of "
                                     f"{t.get('tiles', 0)} tiles in {1000 * (t.get('text_s', 0) + t.get('score_s', 0)):.0f} ms.")
        if isinstance(result, SearchResult):
            summary = f'{len(result.hits)} places match "{result.query}".'
        elif isinstance(result, ClassifyResult):
            summary = f"{len(result.records)} tiles classified into {len(result.classes)} classes."
        elif isinstance(result, AnswerResult):
            summary = result.answer
        else:
            summary = result.global_caption
        self._finish_message(f"{summary} Results: {outcome.output}", outcome)

    def _finish_message(self, text: str, outcome) -> None:
        seconds = time.perf_counter() - self._started
        QgsMessageLog.logMessage(f"{outcome.request.kind} finished in {seconds:.2f} s "
                                 f"(job {outcome.seconds:.2f} s)", "RS-VLM", Qgis.MessageLevel.Info)
        self._message(text, Qgis.MessageLevel.Success)
        if self.dock is not None and outcome.request.kind == "index":
            self.dock.set_status(text)

    def _on_failed(self, message: str) -> None:
        self.task = None
        if self.dock is not None:
            self.dock.set_running(False)
            self.dock.close_progress()
            self.dock.set_status(message)
        # After QGIS's own "Task failed" notice, which it shows once this slot returns: pushed now,
        # the plugin's reason would sit under it.
        QTimer.singleShot(0, lambda: self._message_if_alive(message, Qgis.MessageLevel.Warning))

    def _message_if_alive(self, text: str, level) -> None:
        # run from the event loop: the window may be gone by then, and an exception here would abort QGIS
        try:
            self._message(text, level)
        except RuntimeError:  # its C++ side was deleted (QGIS closing, the plugin unloaded)
            QgsMessageLog.logMessage(text, "RS-VLM", level)

    def _task_alive(self) -> bool:
        try:
            return self.task.status() not in (QgsTask.TaskStatus.Complete, QgsTask.TaskStatus.Terminated)
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
            bar.pushMessage("RS-VLM", text, level=level, duration=0 if level == Qgis.MessageLevel.Critical else 8)
        QgsMessageLog.logMessage(text, "RS-VLM", level)
