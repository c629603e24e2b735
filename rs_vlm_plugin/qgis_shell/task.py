"""Running a describe or search job: the shared job runner and the background QgsTask.

The same :func:`execute` serves the toolbar/panel (through :class:`RsVlmTask`) and the
Processing algorithms; only the :class:`~rs_vlm_plugin.core.progress.ProgressBackend`
differs (task progress here, Processing feedback there).
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.bundle import ModelBundle, default_bundle_dir
from ..core.errors import CancelledError, RsVlmError
from ..core.geometry import Extent
from ..core.gpkg import write_geopackage
from ..core.pipeline import (DescribeResult, JobConfig, SearchResult, ask, classify, describe, result_kinds,
                             result_layers, search)
from ..core.raster import RasterSource

LOG_TAG = "RS-VLM"

_bundles: dict[tuple[str, float], ModelBundle] = {}
_bundles_lock = threading.Lock()


def load_bundle(folder: str | Path | None = None) -> ModelBundle:
    """The model bundle in ``folder`` (default: the plugin's model), loaded once per process.

    Bundles are cached by folder and manifest time, so a re-exported model is picked up and
    the ONNX sessions are created only once for many runs. Thread-safe.

    Raises:
        RsVlmError: The folder holds no valid bundle.
    """
    path = Path(folder) if folder else default_bundle_dir()
    manifest = path / "manifest.json"
    try:
        stamp = manifest.stat().st_mtime
    except OSError:
        stamp = -1.0  # ModelBundle.load explains what is missing
    key = (str(path.resolve()), stamp)
    with _bundles_lock:
        bundle = _bundles.get(key)
        if bundle is None:
            bundle = ModelBundle.load(path)
            for old in [k for k in _bundles if k[0] == key[0]]:
                del _bundles[old]
            _bundles[key] = bundle
        return bundle


JOB_KINDS = ("describe", "search", "classify", "ask")


@dataclass
class JobRequest:
    """One describe, search, classify or ask job, gathered on the main thread.

    Attributes:
        kind: "describe", "search", "classify" or "ask".
        source: Where the pixels come from (a :class:`QgsLayerSource` in QGIS).
        extent: The area, in the raster's CRS; None for the whole raster.
        config: Job settings (tile budget, hits kept, ...).
        query: The search text (search), the question (ask) or comma-separated classes (classify;
            empty uses the knowledge base's scene concepts).
        model_dir: The model bundle folder; None for the plugin's default model.
        output: The GeoPackage to write; None to write nothing.
    """

    kind: str
    source: RasterSource
    extent: Extent | None = None
    config: JobConfig = field(default_factory=JobConfig)
    query: str = ""
    model_dir: Path | None = None
    output: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, not {self.kind!r}")


@dataclass
class JobOutcome:
    """What a finished job produced: the result and the GeoPackage written (if any)."""

    request: JobRequest
    result: DescribeResult | SearchResult
    output: Path | None

    @property
    def layers(self) -> dict[str, list]:
        """Records by output layer name."""
        return result_layers(self.result)


def execute(request: JobRequest, progress) -> JobOutcome:
    """Run a job to the end: load the model, describe or search, write the GeoPackage.

    Args:
        request: The job.
        progress: A ProgressBackend; asked for cancellation between batches.

    Raises:
        RsVlmError: A problem the user can fix (the message says how).
        CancelledError: The user cancelled; nothing was written.
    """
    progress.set_stage("Loading the model")
    bundle = load_bundle(request.model_dir)
    if request.kind == "search":
        result = search(request.source, bundle, request.query, request.extent, request.config, progress)
    elif request.kind == "classify":
        classes = [c for c in request.query.split(",") if c.strip()]
        result = classify(request.source, bundle, classes, request.extent, request.config, progress)
    elif request.kind == "ask":
        result = ask(request.source, bundle, request.query, request.extent, request.config, progress)
    else:
        result = describe(request.source, bundle, request.extent, request.config, progress)
    if progress.is_canceled():
        raise CancelledError()
    for message in result.warnings:
        progress.warn(message)
    output = None
    if request.output is not None:
        progress.set_stage("Writing the GeoPackage")
        output = write_geopackage(request.output, result_layers(result), result.crs_wkt, kinds=result_kinds(result))
    return JobOutcome(request, result, output)


class TaskProgress:
    """ProgressBackend of a QgsTask: progress bar, cancel button and the message log.

    Called from the task's worker thread; it only uses thread-safe calls (setProgress,
    isCanceled, QgsMessageLog, queued signals).
    """

    def __init__(self, task: "RsVlmTask") -> None:
        self._task = task
        self.warnings: list[str] = []

    def set_stage(self, stage: str) -> None:  # noqa: D102
        self._task.stageChanged.emit(stage)
        QgsMessageLog.logMessage(stage, LOG_TAG, Qgis.Info)

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        self._task.setProgress(100.0 * max(0.0, min(1.0, fraction)))

    def is_canceled(self) -> bool:  # noqa: D102
        return self._task.isCanceled()

    def info(self, message: str) -> None:  # noqa: D102
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.Info)

    def warn(self, message: str) -> None:  # noqa: D102
        if message not in self.warnings:
            self.warnings.append(message)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.Warning)


class RsVlmTask(QgsTask):
    """A describe or search job in the background.

    Signals (emitted on the main thread, except ``stageChanged`` which is queued there):
        stageChanged(str): The stage now running.
        jobFinished(object): The :class:`JobOutcome` of a successful job.
        jobFailed(str): The sentence saying why the job failed or that it was cancelled.

    Args:
        request: The job (its source built on the main thread).
        iface: The QgisInterface for messages, or None (messages then go to the log only).
    """

    stageChanged = pyqtSignal(str)
    jobFinished = pyqtSignal(object)
    jobFailed = pyqtSignal(str)

    def __init__(self, request: JobRequest, iface=None) -> None:
        title = f"RS-VLM {request.kind}: {request.source.name}"
        super().__init__(title, QgsTask.CanCancel)
        self.request = request
        self.iface = iface
        self.outcome: JobOutcome | None = None
        self.error: str | None = None
        self.cancelled = False
        self.progress = TaskProgress(self)

    def run(self) -> bool:
        """Run the job (worker thread). No GUI calls here."""
        try:
            self.outcome = execute(self.request, self.progress)
            return True
        except CancelledError as exc:
            self.cancelled = True
            self.error = str(exc)
        except RsVlmError as exc:
            self.error = str(exc)
        except Exception:  # noqa: BLE001 - a bug: keep the traceback in the log
            details = traceback.format_exc()
            QgsMessageLog.logMessage(details, LOG_TAG, Qgis.Critical)
            self.error = ("RS-VLM stopped on an unexpected error; the details are in the RS-VLM tab of the "
                          "Log Messages panel. Please report them.")
        return False

    def finished(self, result: bool) -> None:  # noqa: D401 - Qt naming
        """Hand the outcome back (main thread): signals and the message bar."""
        if result and self.outcome is not None:
            for message in self.progress.warnings:
                self._message(message, Qgis.Warning)
            self.jobFinished.emit(self.outcome)
            return
        if self.isCanceled() or self.cancelled:
            self.cancelled = True
            message = self.error or CancelledError().args[0]
            self._message(message, Qgis.Info)
        else:
            message = self.error or "The job failed without a message; see the RS-VLM log."
            self._message(message, Qgis.Critical)
        self.jobFailed.emit(message)

    def _message(self, text: str, level) -> None:
        bar = self.iface.messageBar() if self.iface is not None and hasattr(self.iface, "messageBar") else None
        if bar is not None:
            bar.pushMessage("RS-VLM", text, level=level, duration=0 if level == Qgis.Critical else 8)
        QgsMessageLog.logMessage(text, LOG_TAG, level)
