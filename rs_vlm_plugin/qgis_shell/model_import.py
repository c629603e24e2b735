"""Importing an open_clip checkpoint from the panel: the importer runs in a separate Python with
torch, as a background task with progress; the new bundle then appears in the model picker."""

from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .child_python import PLUGIN_ROOT, child_error, stream_command

LOG_TAG = "RS-VLM"


class ModelImportTask(QgsTask):
    """``python -m rs_vlm_plugin.modeling.import_clip ...`` in the background.

    Signals (main thread):
        importFinished(object): The new bundle folder (a Path).
        importFailed(str): The sentence saying why (or that it was cancelled).

    Args:
        python: The interpreter with torch.
        arguments: The module and its arguments (see ``model_algorithms.import_arguments``).
        folder: The bundle folder the importer writes.
    """

    importFinished = pyqtSignal(object)
    importFailed = pyqtSignal(str)

    def __init__(self, python: str, arguments: list[str], folder: Path) -> None:
        super().__init__(f"RS-VLM: import {folder.name}", QgsTask.Flag.CanCancel)
        self.python = python
        self.arguments = arguments
        self.folder = folder
        self.error: str | None = None
        self.lines: list[str] = []

    def run(self) -> bool:
        """Run the importer (worker thread); no GUI calls here."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            code, self.lines = stream_command([self.python, "-m", *self.arguments], PLUGIN_ROOT.parent,
                                              on_progress=self.setProgress, on_line=self._log,
                                              is_canceled=self.isCanceled)
        except OSError as exc:
            self.error = f"Could not start {self.python} ({exc}); choose a Python with torch in the settings."
            return False
        if code is None:
            self.error = "The import was cancelled."
            return False
        if code != 0:
            self.error = child_error("model import", self.python, code, self.lines)
            return False
        if not (self.folder / "manifest.json").exists():
            self.error = f"The importer finished but wrote no manifest.json in {self.folder}; see the RS-VLM log."
            return False
        return True

    def finished(self, result: bool) -> None:  # noqa: D401 - Qt naming
        """Report the outcome (main thread)."""
        if result:
            self.importFinished.emit(self.folder)
        else:
            message = self.error or "The import was cancelled."
            QgsMessageLog.logMessage("\n".join(self.lines[-20:]), LOG_TAG, Qgis.MessageLevel.Warning)
            self.importFailed.emit(message)

    def _log(self, line: str) -> None:
        QgsMessageLog.logMessage(line, LOG_TAG, Qgis.MessageLevel.Info)
