"""Checking and installing RS-VLM's Python packages from QGIS: the private package folder of the
profile, the check, and the pip installer as a :class:`QgsTask`.

Imports only qgis and :mod:`rs_vlm_plugin.deps` (never numpy or the core), so it loads in a
QGIS whose Python lacks everything the plugin needs. The dependency dialog (``deps_dialog.py``)
and the fallback plugin (``missing_deps.py``) use it; it uses neither.
"""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .. import deps

LOG_TAG = "RS-VLM"
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
