"""What QGIS gets when RS-VLM's Python packages are missing: an explanation and an installer.

Imports only qgis, :mod:`rs_vlm_plugin.deps` and the shell's dependency modules (never numpy or
the core), so it loads in a QGIS whose Python lacks everything the plugin needs. The installer
(:mod:`.deps_install`) is a :class:`QgsTask` running pip in a subprocess; it starts only when
the user clicks.
"""

from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QAction, QLabel, QPushButton, QSizePolicy, QTextBrowser

from .. import deps
from .deps_install import LOG_TAG, InstallDependenciesTask, result_level, start_install

MENU = "&RS-VLM"


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
