"""The RS-VLM settings dialog: where results and models go, the model mirror, threads, hits kept."""

from __future__ import annotations

from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QSpinBox

from .settings import PluginSettings

MAX_THREADS = 64
MAX_HITS = 500


class SettingsDialog(QDialog):
    """Edits the :class:`PluginSettings` that the panel does not show.

    Args:
        settings: The settings to edit; :meth:`accept` stores them.
        parent: The parent window.
    """

    def __init__(self, settings: PluginSettings, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("RsVlmSettings")
        self.setWindowTitle("RS-VLM settings")
        self.settings = settings
        form = QFormLayout(self)
        self.output_widget = QgsFileWidget(self)
        self.output_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.output_widget.setFilePath(settings.output_folder)
        self.output_widget.setToolTip("Results of unsaved projects go here; a saved project keeps its results "
                                      "in rs_vlm_runs/ beside the project file.")
        form.addRow("Results folder", self.output_widget)
        self.models_widget = QgsFileWidget(self)
        self.models_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.models_widget.setFilePath(settings.models_folder)
        self.models_widget.setToolTip("Where downloaded, installed and imported models go (one sub-folder each); "
                                      "empty for rs_vlm_models in the QGIS settings folder.")
        form.addRow("Models folder", self.models_widget)
        self.mirror_edit = QLineEdit(settings.model_mirror, self)
        self.mirror_edit.setPlaceholderText("the project's releases")
        self.mirror_edit.setToolTip("A base URL to download models from instead of the project's releases (an "
                                    "internal mirror); the registry's sizes and SHA-256 are still checked.")
        form.addRow("Model mirror", self.mirror_edit)
        self.threads_spin = QSpinBox(self)
        self.threads_spin.setRange(0, MAX_THREADS)
        self.threads_spin.setSpecialValueText("automatic")
        self.threads_spin.setValue(settings.threads)
        form.addRow("CPU threads", self.threads_spin)
        self.hits_spin = QSpinBox(self)
        self.hits_spin.setRange(1, MAX_HITS)
        self.hits_spin.setValue(settings.max_hits)
        form.addRow("Search hits kept", self.hits_spin)
        note = QLabel("Device, tile budget and scope are chosen in the panel and remembered from run to run.", self)
        note.setWordWrap(True)
        form.addRow(note)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def accept(self) -> None:  # noqa: D102
        self.settings.output_folder = self.output_widget.filePath().strip()
        self.settings.models_folder = self.models_widget.filePath().strip()
        self.settings.model_mirror = self.mirror_edit.text().strip()
        self.settings.threads = self.threads_spin.value()
        self.settings.max_hits = self.hits_spin.value()
        self.settings.save()
        super().accept()
