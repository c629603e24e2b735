"""What QGIS gets when RS-VLM's Python packages are missing: an explanation and an installer.

Imports only qgis and :mod:`rs_vlm_plugin.deps` (never numpy or the core), so it loads in a
QGIS whose Python lacks everything the plugin needs. The installer is a :class:`QgsTask`
running pip in a subprocess; it starts only when the user clicks.
"""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import QAction, QLabel, QPushButton, QSizePolicy, QTextBrowser

from .. import deps

LOG_TAG = "RS-VLM"
MENU = "&RS-VLM"
CREEP_S = 60.0
"""Time constant of the installer's progress while pip says nothing countable (0 -> 30 %)."""


def private_folder() -> Path:
    """The plugin-private package folder of the current QGIS profile."""
    return deps.private_site_dir(QgsApplication.qgisSettingsDirPath())


def prepare_dependencies() -> deps.DependencyReport:
    """Put the private folder on ``sys.path`` (an earlier install is used), then check everything."""
    deps.activate_private_site(private_folder())
    return deps.check()


class InstallDependenciesTask(QgsTask):
    """Installs what a dependency report finds missing, with pip, into the private folder.

    Signals:
        lineReceived(str): A line of pip's output (emitted from the worker thread).
        installFinished(object): The :class:`~rs_vlm_plugin.deps.InstallResult`, on the main thread.
    """

    lineReceived = pyqtSignal(str)
    installFinished = pyqtSignal(object)

    def __init__(self, report: deps.DependencyReport, target: Path | None = None, cuda: bool | None = None) -> None:
        super().__init__("RS-VLM: installing Python packages", QgsTask.Flag.CanCancel)
        self.report = report
        self.target = Path(target) if target is not None else private_folder()
        self.cuda = cuda
        self.result: deps.InstallResult | None = None
        self._collected = 0
        self._started = time.monotonic()

    def run(self) -> bool:  # noqa: D102 - QgsTask API, worker thread
        try:
            self._started = time.monotonic()
            self.result = deps.install_missing(self.report, self.target, cuda=self.cuda, on_line=self._line,
                                               is_canceled=self._poll)
        except Exception:  # noqa: BLE001 - a bug must reach the log, not vanish in the worker thread
            self.result = deps.InstallResult(False, "The installer failed unexpectedly; see the RS-VLM log and "
                                                    "report the error.", lines=traceback.format_exc().splitlines())
        return self.result.ok

    def _line(self, line: str) -> None:
        # pip gives no overall fraction: each package collected moves the bar on, installing nears the end.
        if line.startswith("Collecting"):
            self._collected += 1
            self._advance(80.0 * (1.0 - 0.85 ** self._collected))
        elif line.startswith("Installing collected packages"):
            self._advance(90.0)
        elif "Retrying" in line:
            QgsMessageLog.logMessage(f"pip retries a download: {line.strip()}", LOG_TAG, Qgis.MessageLevel.Info)
        self.lineReceived.emit(line)

    def _poll(self) -> bool:
        """Polled by the installer while pip runs (also while it is silent, waiting to retry a download)."""
        # the bar creeps on with time up to 30 %, so that a pip that waits or retries shows it is alive
        self._advance(30.0 * (1.0 - math.exp(-(time.monotonic() - self._started) / CREEP_S)))
        return self.isCanceled()

    def _advance(self, percent: float) -> None:
        if percent > self.progress():
            self.setProgress(percent)

    def finished(self, result: bool) -> None:  # noqa: D102 - Qt naming, main thread
        outcome = self.result or deps.InstallResult(False, "The installation was stopped before it finished; "
                                                          "click Install again.", canceled=True)
        if outcome.ok:
            deps.activate_private_site(self.target)
        elif not outcome.canceled:
            QgsMessageLog.logMessage(f"{outcome.message}\n{' '.join(outcome.command)}\n{outcome.last_lines(40)}",
                                     LOG_TAG, Qgis.MessageLevel.Critical)
        self.installFinished.emit(outcome)


def result_level(result: deps.InstallResult):
    """The message-bar level of an install result."""
    if result.ok:
        return Qgis.MessageLevel.Success
    return Qgis.MessageLevel.Info if result.canceled else Qgis.MessageLevel.Critical


def start_install(report: deps.DependencyReport, target: Path | None = None,
                  cuda: bool | None = None) -> InstallDependenciesTask:
    """Run the installer as a background task (QGIS's task manager shows its progress).

    Returns:
        The started task; keep a reference while it runs.
    """
    task = InstallDependenciesTask(report, target, cuda)
    QgsMessageLog.logMessage(f"Installing {', '.join(deps.pip_specs(report.to_install))} into {task.target}.",
                             LOG_TAG, Qgis.MessageLevel.Info)
    QgsApplication.taskManager().addTask(task)
    return task


class MissingDependenciesPlugin:
    """The plugin QGIS gets when required packages are missing: it explains and offers to install them.

    Args:
        iface: The QgisInterface, or None (qgis_process).
        report: What :func:`prepare_dependencies` found.
    """

    def __init__(self, iface, report: deps.DependencyReport) -> None:
        self.iface = iface
        self.report = report
        self.actions: list[QAction] = []
        self.toolbar = None
        self.task: InstallDependenciesTask | None = None
        self._menu_adder = None

    def explanation(self) -> str:
        """The message shown to the user."""
        return "RS-VLM cannot start yet. " + self.report.summary().replace("\n", " ")

    def initProcessing(self) -> None:  # noqa: N802 - QGIS naming
        """No Processing algorithms without the packages; say why in the log."""
        QgsMessageLog.logMessage(self.explanation(), LOG_TAG, Qgis.MessageLevel.Warning)

    def initGui(self) -> None:  # noqa: N802 - QGIS naming
        """Explain in the message bar (with an Install button) and add menu and toolbar entries."""
        QgsMessageLog.logMessage(self.explanation(), LOG_TAG, Qgis.MessageLevel.Warning)
        if self.iface is None:
            return
        window = self.iface.mainWindow() if hasattr(self.iface, "mainWindow") else None
        install = QAction("Install RS-VLM dependencies", window)
        install.setObjectName("RsVlmInstallDependencies")
        install.setEnabled(bool(self.report.to_install))
        install.triggered.connect(self.install)
        check = QAction("Check RS-VLM dependencies", window)
        check.setObjectName("RsVlmCheckDependencies")
        check.triggered.connect(self.open_dialog)
        self.actions = [install, check]
        if hasattr(self.iface, "addToolBar"):
            self.toolbar = self.iface.addToolBar("RS-VLM")
            self.toolbar.setObjectName("RsVlmToolbar")
            self.toolbar.addAction(install)
        self._menu_adder = next((name for name in ("addPluginToRasterMenu", "addPluginToMenu")
                                 if hasattr(self.iface, name)), None)
        if self._menu_adder is not None:
            for action in self.actions:
                getattr(self.iface, self._menu_adder)(MENU, action)
        self._push(self.explanation(), Qgis.MessageLevel.Warning, with_button=bool(self.report.to_install))

    def unload(self) -> None:
        """Remove the entries (a running installation goes on; its result reaches the log)."""
        if self.iface is not None and self._menu_adder is not None:
            remove = getattr(self.iface, self._menu_adder.replace("addPluginTo", "removePlugin"), None)
            for action in self.actions:
                if remove is not None:
                    remove(MENU, action)
        if self.toolbar is not None:
            window = self.iface.mainWindow() if hasattr(self.iface, "mainWindow") else None
            if window is not None:
                window.removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None
        for action in self.actions:
            action.deleteLater()
        self.actions = []

    def install(self) -> InstallDependenciesTask | None:
        """Start installing the missing packages in the background (once at a time)."""
        if self.task is not None:
            self._push("The RS-VLM dependencies are being installed already; wait for it to finish.", Qgis.MessageLevel.Info)
            return None
        self.task = start_install(self.report)
        self.task.installFinished.connect(self._on_finished)
        self._push("Installing the RS-VLM dependencies in the background (progress in the task bar, pip's "
                   "output in the RS-VLM log).", Qgis.MessageLevel.Info)
        return self.task

    def open_dialog(self) -> None:
        """Open the "Check dependencies" dialog."""
        from .deps_dialog import open_dependencies_dialog

        open_dependencies_dialog(self.iface.mainWindow() if hasattr(self.iface, "mainWindow") else None, self.iface)

    def _on_finished(self, result: deps.InstallResult) -> None:
        text = result.message
        if not result.ok and not result.canceled:
            text += " pip's last lines are in the RS-VLM log."
        # after QGIS's own "Task failed" notice, which it pushes once this slot returns: the reason stays on top
        QTimer.singleShot(0, lambda: self._finish(text, result_level(result)))

    def _finish(self, text: str, level) -> None:
        self.task = None
        # run from the event loop: the window may be gone by then, and an exception here would abort QGIS
        try:
            self._push(text, level)
        except RuntimeError:  # its C++ side was deleted (QGIS closing, the plugin unloaded)
            QgsMessageLog.logMessage(text, LOG_TAG, level)

    def _push(self, text: str, level, with_button: bool = False) -> None:
        bar = self.iface.messageBar() if self.iface is not None and hasattr(self.iface, "messageBar") else None
        if bar is None:
            QgsMessageLog.logMessage(text, LOG_TAG, level)
            return
        item = bar.createMessage("RS-VLM", text)
        label = QLabel(text, item)
        label.setObjectName("RsVlmMessageText")
        label.setWordWrap(True)
        label.setTextInteractionFlags(label.textInteractionFlags() | Qt.TextInteractionFlag.TextSelectableByMouse)
        label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        item.layout().addWidget(label)
        if with_button:
            button = QPushButton("Install dependencies", item)
            button.setObjectName("RsVlmInstallDependenciesButton")
            button.clicked.connect(self.install)
            item.layout().addWidget(button)
        bar.pushWidget(item, level, 0 if level in (Qgis.MessageLevel.Warning, Qgis.MessageLevel.Critical) else 10)
        # the whole text in the wrapping label: the item's own text box (set up by pushWidget) shows two lines of it
        for box in item.findChildren(QTextBrowser):
            box.hide()
