"""The RS-VLM panel: pick a raster, describe it or search it by text, see the results.

The panel only gathers inputs and shows progress and results; the plugin
(:mod:`.plugin`) runs the jobs. It talks to the plugin through signals.
"""

from __future__ import annotations

from qgis.core import QgsMapLayerProxyModel
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.dris import PlanConfig
from ..core.pipeline import DescribeResult, SearchResult

MAX_TILE_BUDGET = 1024
EXTENT_ROLE = Qt.UserRole + 1


class RsVlmDock(QDockWidget):
    """The RS-VLM dock widget.

    Signals:
        describeRequested(): The user pressed Describe.
        searchRequested(str): The user pressed Search (or Enter in the query box).
        cancelRequested(): The user pressed Cancel.
        resultActivated(object, object): A result was double-clicked; carries its core
            Extent and the WKT of its CRS (None for rasters without CRS).
    """

    describeRequested = pyqtSignal()
    searchRequested = pyqtSignal(str)
    cancelRequested = pyqtSignal()
    resultActivated = pyqtSignal(object, object)

    def __init__(self, parent=None) -> None:
        super().__init__("RS-VLM", parent)
        self.setObjectName("RsVlmDock")
        body = QWidget(self)
        layout = QVBoxLayout(body)

        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox(body)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.setToolTip("The raster layer to describe or search (any provider: files, WMS, XYZ).")
        form.addRow("Raster", self.layer_combo)
        self.budget_spin = QSpinBox(body)
        self.budget_spin.setRange(1, MAX_TILE_BUDGET)
        self.budget_spin.setValue(PlanConfig().max_tiles)
        self.budget_spin.setSuffix(" tiles")
        self.budget_spin.setToolTip(
            "DRIS budget: the most fine tiles the model looks at. Busy areas get refined first; "
            "more tiles find smaller things but take longer."
        )
        form.addRow("Tile budget", self.budget_spin)
        self.query_edit = QLineEdit(body)
        self.query_edit.setPlaceholderText("e.g. storage tanks next to a river")
        self.query_edit.setClearButtonEnabled(True)
        form.addRow("Search for", self.query_edit)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.describe_button = QPushButton("Describe", body)
        self.describe_button.setToolTip("Caption the visible part of the raster at three levels.")
        self.search_button = QPushButton("Search", body)
        self.search_button.setToolTip("Find the places in the visible part of the raster that match the text.")
        self.cancel_button = QPushButton("Cancel", body)
        for button in (self.describe_button, self.search_button, self.cancel_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)

        self.progress_bar = QProgressBar(body)
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setTextVisible(True)
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("Choose a raster and press Describe, or type a text and press Search.", body)
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.status_label)
        self.results_list = QListWidget(body)
        self.results_list.setWordWrap(True)
        self.results_list.setAlternatingRowColors(True)
        self.results_list.setToolTip("Double-click a result to zoom to it.")
        layout.addWidget(self.results_list, 1)
        self.setWidget(body)

        self.describe_button.clicked.connect(self.describeRequested)
        self.search_button.clicked.connect(self._emit_search)
        self.query_edit.returnPressed.connect(self._emit_search)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.results_list.itemDoubleClicked.connect(self._emit_activated)
        self.layer_combo.layerChanged.connect(self._update_buttons)
        self.query_edit.textChanged.connect(self._update_buttons)
        self._running = False
        self._update_buttons()

    # Inputs -------------------------------------------------------------------------------

    def current_layer(self):
        """The chosen raster layer, or None."""
        return self.layer_combo.currentLayer()

    def query(self) -> str:
        """The search text, stripped."""
        return self.query_edit.text().strip()

    def max_tiles(self) -> int:
        """The DRIS tile budget."""
        return self.budget_spin.value()

    # State --------------------------------------------------------------------------------

    def set_running(self, running: bool) -> None:
        """Enable Cancel while a job runs, the job buttons otherwise."""
        self._running = running
        if running:
            self.progress_bar.setValue(0)
        self._update_buttons()

    def set_progress(self, percent: float) -> None:
        """Show progress in percent."""
        self.progress_bar.setValue(int(round(percent)))

    def set_status(self, text: str) -> None:
        """Show a one-line status (a stage, a result summary or an error sentence)."""
        self.status_label.setText(text)

    # Results ------------------------------------------------------------------------------

    def clear_results(self) -> None:
        """Empty the result list."""
        self.results_list.clear()

    def show_result(self, result: DescribeResult | SearchResult) -> None:
        """List the captions (global, then regions, then the best object captions) or hits."""
        self.clear_results()
        if isinstance(result, SearchResult):
            for hit in result.hits:
                self._add_item(f"#{hit.rank}  {hit.score:.3f}  ({hit.level}, {hit.gsd_m:.2f} m)\n{hit.caption}",
                               hit.extent, result.crs_wkt)
            self.set_status(f'{len(result.hits)} places match "{result.query}".' if result.hits
                            else f'Nothing matches "{result.query}" here.')
            return
        for level, records in result.by_level().items():
            for record in sorted(records, key=lambda r: -r.score):
                self._add_item(f"{level.capitalize()}  {record.score:.2f}  ({record.gsd_m:.2f} m)\n{record.caption}",
                               record.extent, result.crs_wkt)
        self.set_status(result.global_caption or "No caption was produced.")

    def _add_item(self, text: str, extent, crs_wkt) -> None:
        item = QListWidgetItem(text)
        item.setData(EXTENT_ROLE, (extent, crs_wkt))
        item.setToolTip(text)
        self.results_list.addItem(item)

    # Internals ----------------------------------------------------------------------------

    def _emit_search(self) -> None:
        if not self._running and self.search_button.isEnabled():
            self.searchRequested.emit(self.query())

    def _emit_activated(self, item: QListWidgetItem) -> None:
        data = item.data(EXTENT_ROLE)
        if data is not None:
            self.resultActivated.emit(*data)

    def _update_buttons(self, *_changed) -> None:
        has_layer = self.current_layer() is not None
        self.describe_button.setEnabled(has_layer and not self._running)
        self.search_button.setEnabled(has_layer and bool(self.query()) and not self._running)
        self.cancel_button.setEnabled(self._running)
        self.layer_combo.setEnabled(not self._running)
        self.budget_spin.setEnabled(not self._running)
