"""The "Check dependencies" dialog: a table of RS-VLM's Python packages with an Install button.

Imports only qgis, :mod:`rs_vlm_plugin.deps` and :mod:`.deps_install`, so both the normal
plugin and the fallback one (packages missing) can open it.
"""

from __future__ import annotations

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QDialog, QDialogButtonBox, QHeaderView, QLabel, QPlainTextEdit, QProgressBar,
                                 QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout)

from .. import deps
from .deps_install import InstallDependenciesTask, private_folder, start_install

COLUMNS = ("Package", "Status", "Version", "Needed for", "Details")

_open_dialogs: list["DependenciesDialog"] = []  # non-modal dialogs live until closed


class DependenciesDialog(QDialog):
    """Shows :func:`rs_vlm_plugin.deps.check`'s report; installs what is missing on request.

    Args:
        parent: The parent widget (QGIS's main window).
        report: A report to show; default a fresh check.
    """

    def __init__(self, parent=None, report: deps.DependencyReport | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("RsVlmDependenciesDialog")
        self.setWindowTitle("RS-VLM: Python packages")
        self.task: InstallDependenciesTask | None = None
        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.summary = QLabel(self)
        self.summary.setWordWrap(True)
        self.folder = QLabel(f"Packages RS-VLM installs go to {private_folder()}", self)
        self.folder.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 100)
        self.progress.hide()
        self.output = QPlainTextEdit(self)
        self.output.setReadOnly(True)
        self.output.setMaximumBlockCount(2000)
        self.output.hide()
        buttons = QDialogButtonBox(self)
        self.install_button = QPushButton("Install dependencies", self)
        self.install_button.setObjectName("RsVlmInstallDependenciesButton")
        self.cancel_button = QPushButton("Cancel installation", self)
        self.cancel_button.setEnabled(False)
        self.recheck_button = QPushButton("Check again", self)
        close = buttons.addButton(QDialogButtonBox.StandardButton.Close)
        for button in (self.install_button, self.cancel_button, self.recheck_button):
            buttons.addButton(button, QDialogButtonBox.ButtonRole.ActionRole)
        self.install_button.clicked.connect(self.install)
        self.cancel_button.clicked.connect(self.cancel)
        self.recheck_button.clicked.connect(lambda: self.show_report(deps.check()))
        close.clicked.connect(self.close)
        layout = QVBoxLayout(self)
        for widget in (self.summary, self.table, self.folder, self.progress, self.output, buttons):
            layout.addWidget(widget)
        self.resize(820, 420)
        self.report = report
        self.show_report(report or deps.check())

    def show_report(self, report: deps.DependencyReport) -> None:
        """Fill the table and the summary from ``report``."""
        self.report = report
        self.table.setRowCount(len(report.states))
        for row, state in enumerate(report.states):
            requirement = state.requirement
            status = state.status if requirement.required or state.ok else f"{state.status} (optional)"
            details = state.error or state.location or ""
            cells = (requirement.pip_name or requirement.import_name, status, state.version or "", requirement.why,
                     details)
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.table.setItem(row, column, item)
        self.summary.setText(report.summary())
        self.install_button.setEnabled(bool(report.to_install) and self.task is None)

    def install(self) -> InstallDependenciesTask | None:
        """Install what the report finds missing, in the background, showing pip's output."""
        if self.task is not None or not self.report.to_install:
            return None
        self.output.clear()
        self.output.show()
        self.progress.setValue(0)
        self.progress.show()
        self.install_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.task = start_install(self.report)
        self.task.lineReceived.connect(self.output.appendPlainText)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self.task.installFinished.connect(self._on_finished)
        return self.task

    def cancel(self) -> None:
        """Stop the running installation."""
        if self.task is not None:
            self.task.cancel()

    def _on_finished(self, result: deps.InstallResult) -> None:
        self.task = None
        self.cancel_button.setEnabled(False)
        self.progress.setValue(100 if result.ok else self.progress.value())
        self.show_report(deps.check())
        extra = "" if result.ok or result.canceled else " pip's last lines are above and in the RS-VLM log."
        self.summary.setText(result.message + extra)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        """Forget the dialog (an installation goes on; its result reaches the log)."""
        if self in _open_dialogs:
            _open_dialogs.remove(self)
        super().closeEvent(event)


def open_dependencies_dialog(parent=None, iface=None) -> DependenciesDialog:
    """Open the "Check dependencies" dialog, non-modal, with a fresh check.

    Args:
        parent: The parent widget; default ``iface.mainWindow()``.
        iface: The QgisInterface (used for the parent when none is given).

    Returns:
        The dialog (kept alive until closed).
    """
    if parent is None and iface is not None and hasattr(iface, "mainWindow"):
        parent = iface.mainWindow()
    dialog = DependenciesDialog(parent)
    _open_dialogs.append(dialog)
    dialog.show()
    return dialog
