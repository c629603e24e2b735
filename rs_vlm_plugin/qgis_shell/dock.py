"""The RS-VLM panel: choose a model, a mode, a raster and a scope; run; read and filter the results.

The panel only gathers inputs into a :class:`~.panel_options.DockRequest` and shows progress and
results; the plugin (:mod:`.plugin`) runs the jobs and owns the result layers. They talk through signals.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.jobs.results import AnswerResult, ClassifyResult, DescribeResult, SearchResult
from ..core.locate.boxes import BoxConfig
from ..core.pace import format_duration
from ..core.planning.dris import PlanConfig
from .panel_options import ANSWERS, DEVICES, MODES, SCOPES, DockRequest

MAX_TILE_BUDGET = 1024
DETAIL_STEPS = (6, 12, 24, 48, 96, 192, 384, 768)
"""Tile budgets of the detail-versus-speed slider, fastest first."""
EXTENT_ROLE = Qt.ItemDataRole.UserRole + 1
SCORE_ROLE = Qt.ItemDataRole.UserRole + 2
KIND_ROLE = Qt.ItemDataRole.UserRole + 3
OUTLINE_KIND = "outline"
"""Outlines score on their own scale (calibrated relevance, about 0.99 to 1) apart from the tiles
(cosine similarity, about 0.1 to 0.4): the score slider moves each kind over its own range."""
THRESHOLD_STEPS = 100
NO_MODEL = "No model is installed: choose Models ▸ Download rs-vlm-lite0 beside the model picker (or Install from file…)."


class RsVlmDock(QDockWidget):
    """The RS-VLM dock widget.

    Signals:
        runRequested(object): The user pressed Run (or Enter in the query box); a DockRequest.
        indexRequested(object): The user pressed "Build index"; a DockRequest (mode "index").
        importRequested(): The user chose "Import CLIP checkpoint…" in the Models menu beside the picker.
        downloadRequested(str): The user chose "Download <model>…" (a registry model's name).
        installFileRequested(): The user chose "Install from file…" (a model package).
        cancelRequested(): The user pressed Cancel.
        resultActivated(object, object): A result was clicked; its core Extent and the WKT of
            its CRS (None for rasters without CRS).
        thresholdChanged(float): The score threshold moved; the plugin filters the layer.
    """

    runRequested = pyqtSignal(object)
    indexRequested = pyqtSignal(object)
    importRequested = pyqtSignal()
    downloadRequested = pyqtSignal(str)
    installFileRequested = pyqtSignal()
    cancelRequested = pyqtSignal()
    resultActivated = pyqtSignal(object, object)
    thresholdChanged = pyqtSignal(float)

    def __init__(self, parent=None, models: list[tuple[str, Path]] | None = None, cuda_available: bool = False) -> None:
        super().__init__("RS-VLM", parent)
        self.setObjectName("RsVlmDock")
        body = QWidget(self)
        layout = QVBoxLayout(body)
        form = QFormLayout()

        self.model_combo = QComboBox(body)
        self.model_combo.setToolTip("The model: the installed RS-VLM models and any imported ones.")
        self.models_button = QToolButton(body)
        self.models_button.setText("Models")
        self.models_button.setToolTip("Download a model, install one from a file, or import a CLIP checkpoint.")
        self.models_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.models_menu = QMenu(self.models_button)
        self.models_button.setMenu(self.models_menu)
        self.set_downloads([])
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.models_button)
        form.addRow("Model", model_row)
        self.mode_combo = QComboBox(body)
        for mode, (label, *_rest) in MODES.items():
            self.mode_combo.addItem(label, mode)
        form.addRow("Mode", self.mode_combo)
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.layer_combo.setToolTip("The raster layer (any provider: files, WMS, XYZ).")
        form.addRow("Raster", self.layer_combo)
        self.query_label = QLabel("Search for", body)
        self.query_combo = QComboBox(body)
        self.query_combo.setEditable(True)
        self.query_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.query_combo.setToolTip("Type, or pick an earlier query from the list.")
        self.query_edit = self.query_combo.lineEdit()
        self.query_edit.setClearButtonEnabled(True)
        form.addRow(self.query_label, self.query_combo)

        scope_row = QHBoxLayout()
        self.scope_combo = QComboBox(body)
        for scope, label in SCOPES.items():
            self.scope_combo.addItem(label, scope)
        self.mask_combo = QgsMapLayerComboBox(body)
        self.mask_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.mask_combo.setToolTip("The polygon layer whose selected features limit the area.")
        scope_row.addWidget(self.scope_combo, 1)
        scope_row.addWidget(self.mask_combo, 1)
        form.addRow("Scope", scope_row)

        detail_row = QHBoxLayout()
        self.detail_slider = QSlider(Qt.Orientation.Horizontal, body)
        self.detail_slider.setRange(0, len(DETAIL_STEPS) - 1)
        self.detail_slider.setToolTip("Faster (left) or more detail (right): how many fine tiles DRIS may spend.")
        self.budget_spin = QSpinBox(body)
        self.budget_spin.setRange(1, MAX_TILE_BUDGET)
        self.budget_spin.setSuffix(" tiles")
        self.budget_spin.setToolTip(
            "DRIS budget: the most fine tiles the model looks at. Busy areas are refined first; "
            "more tiles find smaller things but take longer.")
        detail_row.addWidget(QLabel("Faster", body))
        detail_row.addWidget(self.detail_slider, 1)
        detail_row.addWidget(QLabel("More detail", body))
        detail_row.addWidget(self.budget_spin)
        form.addRow("Detail", detail_row)

        answers_row = QHBoxLayout()
        self.answers_combo = QComboBox(body)
        for answers, label in ANSWERS.items():
            self.answers_combo.addItem(label, answers)
        self.answers_combo.setToolTip(
            "How Search and \"where is X?\" draw what they find: one box per object when the text names an object "
            "(airplanes, ships, storage tanks, vehicles, …), relevance outlines when it names a region "
            "(\"flooded fields\").")
        self.box_score_spin = QDoubleSpinBox(body)
        self.box_score_spin.setRange(0.0, 1.0)
        self.box_score_spin.setDecimals(2)
        self.box_score_spin.setSingleStep(0.05)
        self.box_score_spin.setPrefix("min. box score ")
        self.box_score_spin.setValue(BoxConfig().min_score)
        self.box_score_spin.setToolTip("Boxes scoring below this (heat × p(query), 0 to 1) are not drawn.")
        answers_row.addWidget(self.answers_combo, 1)
        answers_row.addWidget(self.box_score_spin)
        form.addRow("Answers", answers_row)

        self.device_combo = QComboBox(body)
        for device, label in DEVICES.items():
            self.device_combo.addItem(label, device)
        if not cuda_available:
            self.device_combo.model().item(self.device_combo.findData("cuda")).setEnabled(False)
            self.device_combo.setItemData(self.device_combo.findData("cuda"),
                                          "onnxruntime offers no CUDA provider here.", Qt.ItemDataRole.ToolTipRole)
        form.addRow("Device", self.device_combo)
        self.plan_check = QCheckBox("Show the DRIS tiles (where compute went)", body)
        form.addRow("", self.plan_check)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Describe", body)
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel", body)
        self.index_button = QPushButton("Build index", body)
        self.index_button.setToolTip("Encode the layer once so that searches answer in milliseconds.")
        for button in (self.run_button, self.cancel_button, self.index_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)

        self.progress_bar = QProgressBar(body)
        self.progress_bar.setRange(0, 100)
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("Choose a raster, a mode and press Run.", body)
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status_label)
        self.answer_label = QLabel("", body)
        self.answer_label.setObjectName("RsVlmAnswer")
        self.answer_label.setWordWrap(True)
        self.answer_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.answer_label.setStyleSheet("font-weight: bold; padding: 4px;")
        layout.addWidget(self.answer_label)

        threshold_row = QHBoxLayout()
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal, body)
        self.threshold_slider.setRange(0, THRESHOLD_STEPS)
        self.threshold_slider.setToolTip("Hide results (in this list and on the map) scoring below this value.")
        self.threshold_label = QLabel("", body)
        threshold_row.addWidget(QLabel("Min. score", body))
        threshold_row.addWidget(self.threshold_slider, 1)
        threshold_row.addWidget(self.threshold_label)
        layout.addLayout(threshold_row)
        self.results_list = QListWidget(body)
        self.results_list.setWordWrap(True)
        self.results_list.setAlternatingRowColors(True)
        self.results_list.setToolTip("Click a result to zoom to it and flash it on the map.")
        layout.addWidget(self.results_list, 1)
        self.setWidget(body)

        self._running = False
        self._has_model = False
        self._score_range = (0.0, 1.0)
        self._score_ranges: dict[str, tuple[float, float]] = {}
        self.set_models(models or [])
        self.mode_combo.currentIndexChanged.connect(self._mode_changed)
        self.scope_combo.currentIndexChanged.connect(self._update_controls)
        self.answers_combo.currentIndexChanged.connect(self._update_controls)
        self.detail_slider.valueChanged.connect(lambda step: self.budget_spin.setValue(DETAIL_STEPS[step]))
        self.budget_spin.valueChanged.connect(self._budget_changed)
        self.run_button.clicked.connect(self._emit_run)
        self.query_edit.returnPressed.connect(self._emit_run)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.index_button.clicked.connect(self._emit_index)
        self.results_list.itemClicked.connect(self._emit_activated)
        self.results_list.itemActivated.connect(self._emit_activated)
        self.threshold_slider.valueChanged.connect(self._threshold_moved)
        self.layer_combo.layerChanged.connect(self._update_controls)
        self.mask_combo.layerChanged.connect(self._update_controls)
        self.query_edit.textChanged.connect(self._update_controls)
        self.budget_spin.setValue(PlanConfig().max_tiles)
        self._mode_changed()

    # Inputs -------------------------------------------------------------------------------

    def set_models(self, models: list[tuple[str, Path]], current: str = "") -> None:
        """Fill the model picker with (name, bundle folder) pairs; choose ``current`` (default: the first).

        With no model, the status line says how to get one and Run stays disabled.
        """
        self.model_combo.clear()
        for name, folder in models:
            self.model_combo.addItem(name, str(folder))
            self.model_combo.setItemData(self.model_combo.count() - 1, str(folder), Qt.ItemDataRole.ToolTipRole)
        index = self.model_combo.findText(current) if current else 0
        self.model_combo.setCurrentIndex(max(0, index))
        self._has_model = bool(models)
        if not models:
            self.set_status(NO_MODEL)
        self._update_controls()

    def set_downloads(self, offers: list[tuple[str, str]]) -> None:
        """The Models menu: "Download <label>…" for each ``(name, label)``, then install and import."""
        self.models_menu.clear()
        for name, label in offers:
            action = self.models_menu.addAction(f"Download {label}…")
            action.setData(name)
            action.triggered.connect(lambda _checked=False, n=name: self.downloadRequested.emit(n))
        if offers:
            self.models_menu.addSeparator()
        self.models_menu.addAction("Install from file…").triggered.connect(lambda _c=False: self.installFileRequested.emit())
        self.models_menu.addAction("Import CLIP checkpoint…").triggered.connect(lambda _c=False: self.importRequested.emit())

    def set_history(self, queries: list[str]) -> None:
        """Earlier queries, newest first, offered in the query box's list."""
        text = self.query_edit.text()
        self.query_combo.blockSignals(True)
        self.query_combo.clear()
        self.query_combo.addItems(queries)
        self.query_combo.setCurrentIndex(-1)
        self.query_combo.blockSignals(False)
        self.query_edit.setText(text)

    def set_mode(self, mode: str) -> None:
        """Switch the mode ("describe", "search", "classify" or "ask")."""
        self.mode_combo.setCurrentIndex(self.mode_combo.findData(mode))

    def mode(self) -> str:
        """The chosen mode."""
        return self.mode_combo.currentData()

    def current_layer(self):
        """The chosen raster layer, or None."""
        return self.layer_combo.currentLayer()

    def query(self) -> str:
        """The query text, stripped."""
        return self.query_edit.text().strip()

    def max_tiles(self) -> int:
        """The DRIS tile budget."""
        return self.budget_spin.value()

    def model_dir(self) -> Path | None:
        """The chosen model's bundle folder (None when there is none to choose)."""
        folder = self.model_combo.currentData()
        return Path(folder) if folder else None

    def request(self, mode: str | None = None) -> DockRequest:
        """Everything the panel holds, as a request."""
        return DockRequest(mode=mode or self.mode(), query=self.query(), layer=self.current_layer(),
                           scope=self.scope_combo.currentData(), mask_layer=self.mask_combo.currentLayer(),
                           max_tiles=self.max_tiles(), model_dir=self.model_dir(),
                           device=self.device_combo.currentData(), show_plan=self.plan_check.isChecked(),
                           answers=self.answers_combo.currentData(),
                           boxes=BoxConfig(min_score=self.box_score_spin.value()))

    # State --------------------------------------------------------------------------------

    def set_running(self, running: bool) -> None:
        """Enable Cancel while a job runs, the inputs otherwise."""
        self._running = running
        if running:
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("%p%")
        self._update_controls()

    def close_progress(self) -> None:
        """A job stopped without finishing: the bar goes back to empty rather than stay where it stopped."""
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")

    def set_progress(self, percent: float, eta_s: float | None = None) -> None:
        """Show progress in percent and, when known, the time left."""
        self.progress_bar.setValue(int(round(percent)))
        self.progress_bar.setFormat(f"%p%  ({format_duration(eta_s)} left)" if eta_s is not None else "%p%")

    def set_status(self, text: str) -> None:
        """Show a one-line status (a stage, a result summary or an error sentence)."""
        self.status_label.setText(text)

    # Results ------------------------------------------------------------------------------

    def clear_results(self) -> None:
        """Empty the result list and the answer."""
        self.results_list.clear()
        self.answer_label.setText("")

    def show_result(self, result) -> None:
        """List a job's results: captions (global caption on top), hits, classes or evidence."""
        self.clear_results()
        crs = result.crs_wkt
        if isinstance(result, SearchResult):
            for hit in result.hits:
                self._add_item(f"#{hit.rank}  {hit.score:.3f}  ({hit.level}, {hit.gsd_m:.2f} m)\n{hit.caption}",
                               hit.extent, crs, hit.score)
            self._add_outlines(result.outlines, crs)
            self.set_status((f'{len(result.hits)} places match "{result.query}".' if result.hits
                             else f'Nothing matches "{result.query}" here.') + self._outline_note(result.outlines))
        elif isinstance(result, ClassifyResult):
            for record in sorted(result.records, key=lambda r: -r.confidence):
                self._add_item(f"{record.label}  {record.confidence:.2f}  (runner-up {record.runner_up})",
                               record.extent, crs, record.confidence)
            shares = ", ".join(f"{name} {100 * share:.0f} %" for name, share in
                               sorted(result.shares().items(), key=lambda kv: -kv[1]) if share > 0)
            self.answer_label.setText(f"Scene: {result.scene[0][0]}." if result.scene else "")
            self.set_status(f"{len(result.records)} tiles classified: {shares}.")
        elif isinstance(result, AnswerResult):
            self.answer_label.setText(result.answer)
            for record in result.evidence:
                self._add_item(f"#{record.rank}  {record.score:.2f}  ({record.level})\n{record.caption}",
                               record.extent, crs, record.score)
            self._add_outlines(result.outlines, crs)
            self.set_status(f"{len(result.evidence)} evidence tiles." + self._outline_note(result.outlines))
        elif isinstance(result, DescribeResult):
            self.answer_label.setText(result.global_caption)
            for level, records in result.by_level().items():
                for record in sorted(records, key=lambda r: -r.score):
                    self._add_item(f"{level.capitalize()}  {record.score:.2f}  ({record.gsd_m:.2f} m)\n{record.caption}",
                                   record.extent, crs, record.score)
            self.set_status(f"{len(result.records)} captions: the whole view, its regions and its fine tiles."
                            if result.records else "No caption was produced.")
        by_kind: dict[str, list[float]] = {}
        for i in range(self.results_list.count()):
            item = self.results_list.item(i)
            by_kind.setdefault(item.data(KIND_ROLE), []).append(item.data(SCORE_ROLE))
        self._score_ranges = {kind: (min(v), max(v)) for kind, v in by_kind.items()}
        tiles = [k for k in self._score_ranges if k != OUTLINE_KIND]
        self._score_range = self._score_ranges[tiles[0]] if tiles else \
            self._score_ranges.get(OUTLINE_KIND, (0.0, 1.0))
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setValue(0)
        self.threshold_slider.blockSignals(False)
        self._threshold_moved(0, emit=False)

    def threshold(self) -> float:
        """The score under which results (tiles; outlines when there are only outlines) are hidden."""
        low, high = self._score_range
        return low + (high - low) * self.threshold_slider.value() / THRESHOLD_STEPS

    def outline_threshold(self) -> float:
        """The score under which outlines are hidden: the slider's position over the outlines' own range."""
        low, high = self._score_ranges.get(OUTLINE_KIND, self._score_range)
        return low + (high - low) * self.threshold_slider.value() / THRESHOLD_STEPS

    def set_threshold(self, value: float) -> None:
        """Move the threshold slider to the step nearest ``value``."""
        low, high = self._score_range
        step = 0 if high <= low else round((value - low) / (high - low) * THRESHOLD_STEPS)
        self.threshold_slider.setValue(max(0, min(THRESHOLD_STEPS, step)))

    def visible_results(self) -> int:
        """How many results pass the threshold."""
        return sum(not self.results_list.item(i).isHidden() for i in range(self.results_list.count()))

    def _add_outlines(self, outlines, crs_wkt) -> None:
        """List the outlines of what a search (or "where is X?") found, after its tiles."""
        for o in outlines or []:
            self._add_item(f"Outline #{o.rank}  {o.score:.3f}  ({o.shape}, {o.area_m2:,.0f} m², {o.gsd_m:.2f} m)",
                           o.extent, crs_wkt, o.score, OUTLINE_KIND)

    @staticmethod
    def _outline_note(outlines) -> str:
        if outlines is None:
            return ""
        return f" {len(outlines)} outlines." if outlines else " Nothing relevant enough to outline."

    def _add_item(self, text: str, extent, crs_wkt, score: float, kind: str = "tile") -> None:
        item = QListWidgetItem(text)
        item.setData(EXTENT_ROLE, (extent, crs_wkt))
        item.setData(SCORE_ROLE, float(score))
        item.setData(KIND_ROLE, kind)
        item.setToolTip(text)
        self.results_list.addItem(item)

    # Internals ----------------------------------------------------------------------------

    def _threshold_moved(self, _step: int, emit: bool = True) -> None:
        value, outline = self.threshold(), self.outline_threshold()
        both = OUTLINE_KIND in self._score_ranges and len(self._score_ranges) > 1
        self.threshold_label.setText(f"{value:.3f} (outlines {outline:.4f})" if both else f"{value:.3f}")
        for i in range(self.results_list.count()):
            item = self.results_list.item(i)
            limit = outline if item.data(KIND_ROLE) == OUTLINE_KIND else value
            item.setHidden(item.data(SCORE_ROLE) < limit - 1e-9)
        if emit:
            self.thresholdChanged.emit(value)

    def _budget_changed(self, value: int) -> None:
        step = min(range(len(DETAIL_STEPS)), key=lambda k: abs(DETAIL_STEPS[k] - value))
        self.detail_slider.blockSignals(True)
        self.detail_slider.setValue(step)
        self.detail_slider.blockSignals(False)

    def _mode_changed(self, *_changed) -> None:
        _, query_label, placeholder, run_text, tooltip = MODES[self.mode()]
        self.query_label.setText(query_label or "Query")
        self.query_edit.setPlaceholderText(placeholder or "(not needed to describe)")
        self.run_button.setText(run_text)
        self.run_button.setToolTip(tooltip)
        self._update_controls()

    def _emit_run(self) -> None:
        if not self._running and self.run_button.isEnabled():
            self.runRequested.emit(self.request())

    def _emit_index(self) -> None:
        if not self._running and self.index_button.isEnabled():
            self.indexRequested.emit(self.request("index"))

    def _emit_activated(self, item: QListWidgetItem) -> None:
        data = item.data(EXTENT_ROLE)
        if data is not None:
            self.resultActivated.emit(*data)

    def _update_controls(self, *_changed) -> None:
        mode = self.mode()
        has_layer = self.current_layer() is not None
        needs_text = mode in ("search", "ask")
        selection = self.scope_combo.currentData() == "selection"
        has_mask = not selection or self.mask_combo.currentLayer() is not None
        idle = not self._running
        ready = idle and has_layer and has_mask and self._has_model
        self.run_button.setEnabled(ready and (bool(self.query()) or not needs_text))
        self.index_button.setEnabled(ready)
        self.cancel_button.setEnabled(self._running)
        self.query_combo.setEnabled(idle and mode != "describe")
        self.mask_combo.setVisible(selection)
        for widget in (self.model_combo, self.models_button, self.mode_combo, self.layer_combo, self.scope_combo, self.mask_combo,
                       self.detail_slider, self.budget_spin, self.device_combo, self.plan_check):
            widget.setEnabled(idle)
        answers = idle and needs_text  # only search and ask draw what they find
        self.answers_combo.setEnabled(answers)
        self.box_score_spin.setEnabled(answers and self.answers_combo.currentData() != "outlines")
