"""Running a describe or search job: the shared job runner and the background QgsTask.

The same :func:`execute` serves the toolbar/panel (through :class:`RsVlmTask`) and the
Processing algorithms; only the :class:`~rs_vlm_plugin.core.progress.ProgressBackend`
differs (task progress here, Processing feedback there).
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.bundle import ModelBundle, RuntimeOptions, default_bundle_dir
from ..core.errors import CancelledError, RsVlmError
from ..core.geometry import Extent
from ..core.gpkg import write_geopackage
from ..core.jobs.config import JobConfig
from ..core.jobs.index import EmbeddingIndex, build_index, read_meta
from ..core.jobs.results import result_kinds, result_layers
from ..core.jobs.run import run_job
from ..core.pace import Pace
from ..core.planning.plan_layer import PLAN_LAYER, plan_records
from ..core.progress import check_canceled
from ..core.raster import RasterSource
from ..core.records import PlanTileRecord

LOG_TAG = "RS-VLM"

_bundles: dict[tuple[str, float, RuntimeOptions], ModelBundle] = {}
_bundles_lock = threading.Lock()


def load_bundle(folder: str | Path | None = None, options: RuntimeOptions | None = None) -> ModelBundle:
    """The model bundle in ``folder`` (default: the plugin's model), loaded once per process.

    Bundles are cached by folder, manifest time and runtime options (device, threads), so a
    re-exported model is picked up and the ONNX sessions are created only once for many runs.
    Thread-safe.

    Raises:
        RsVlmError: The folder holds no valid bundle.
    """
    path = Path(folder) if folder else default_bundle_dir()
    manifest = path / "manifest.json"
    try:
        stamp = manifest.stat().st_mtime
    except OSError:
        stamp = -1.0  # ModelBundle.load explains what is missing
    options = options or RuntimeOptions()
    key = (str(path.resolve()), stamp, options)
    with _bundles_lock:
        bundle = _bundles.get(key)
        if bundle is None:
            bundle = ModelBundle.load(path, options)
            for old in [k for k in _bundles if k[0] == key[0] and k[1] != stamp]:
                del _bundles[old]
            _bundles[key] = bundle
        return bundle


_indexes: dict[str, tuple[float, EmbeddingIndex]] = {}


def open_index(path: str | Path) -> EmbeddingIndex:
    """The embedding index at ``path``, opened once per process and file version (thread-safe).

    Repeated searches of one layer then cost a text encoding and a matrix product only.
    """
    key = str(Path(path).resolve())
    try:
        stamp = Path(path).stat().st_mtime
    except OSError:
        stamp = -1.0  # EmbeddingIndex.open explains what is missing
    with _bundles_lock:
        cached = _indexes.get(key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, EmbeddingIndex.open(path))
            _indexes[key] = cached
        return cached[1]


JOB_KINDS = ("describe", "search", "classify", "ask", "index")


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
        options: Device and threads of the ONNX sessions.
        index_path: "index": the index file to build; "search": an index to answer from
            instead of reading the raster (None reads the raster).
        source_id: Identity of the raster's source, stored in an index it builds.
        show_plan: Also write the DRIS quadtree (where compute went) as a layer.
    """

    kind: str
    source: RasterSource
    extent: Extent | None = None
    config: JobConfig = field(default_factory=JobConfig)
    query: str = ""
    model_dir: Path | None = None
    output: Path | None = None
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    index_path: Path | None = None
    source_id: str = ""
    show_plan: bool = False

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {JOB_KINDS}, not {self.kind!r}")


@dataclass
class IndexBuilt:
    """The result of an "index" job: the index file and how many tiles it holds."""

    path: Path
    n_tiles: int
    crs_wkt: str | None
    warnings: list[str]


@dataclass
class JobOutcome:
    """What a finished job produced: the result and the GeoPackage written (if any).

    Attributes:
        written: The layers written to ``output``, in drawing order (bottom first).
        seconds: Wall time of the job in the worker.
    """

    request: JobRequest
    result: object
    output: Path | None
    written: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def layers(self) -> dict[str, list]:
        """Records by output layer name."""
        return {} if isinstance(self.result, IndexBuilt) else result_layers(self.result)


def job_layers(request: JobRequest, result) -> tuple[dict[str, list], dict[str, type]]:
    """The layers a job writes: its result layers and, when asked, the DRIS plan under them."""
    layers, kinds = result_layers(result), result_kinds(result)
    if request.show_plan and getattr(result, "plan", None) is not None:
        records = plan_records(result.plan, request.source.georef.metres_per_unit, request.source.name)
        layers = {PLAN_LAYER: records, **layers}
        kinds = {PLAN_LAYER: PlanTileRecord, **kinds}
    return layers, kinds


def execute(request: JobRequest, progress) -> JobOutcome:
    """Run a job to the end: load the model, describe or search, write the GeoPackage.

    Args:
        request: The job.
        progress: A ProgressBackend; asked for cancellation between batches.

    Raises:
        RsVlmError: A problem the user can fix (the message says how).
        CancelledError: The user cancelled; nothing was written.
    """
    started = time.perf_counter()
    progress.set_stage("Loading the model")
    bundle = load_bundle(request.model_dir, request.options)
    check_canceled(progress)
    if request.kind == "index":
        path = build_index(request.source, bundle, request.index_path, request.extent, request.config, progress,
                           source_id=request.source_id)
        built = IndexBuilt(path, int(read_meta(path)["tiles"]), request.source.georef.crs_wkt,
                           list(request.source.warnings))
        return JobOutcome(request, built, None, seconds=time.perf_counter() - started)
    if request.kind == "search" and request.index_path is not None:
        progress.set_stage("Searching the index")
        index = open_index(request.index_path)
        index.check_model(bundle)
        result = index.search(bundle, request.query, max_hits=request.config.max_hits,
                              min_score=request.config.min_score, extent=request.extent)
        progress.set_fraction(1.0)
    else:
        result = run_job(request.kind, request.source, bundle, request.query, request.extent, request.config,
                         progress)
    if progress.is_canceled():
        raise CancelledError()
    for message in result.warnings:
        progress.warn(message)
    output = None
    layers, kinds = job_layers(request, result)
    if request.output is not None:
        progress.set_stage("Writing the GeoPackage")
        output = write_geopackage(request.output, layers, result.crs_wkt, kinds=kinds,
                                  finish=lambda _: check_canceled(progress))
    return JobOutcome(request, result, output, list(layers), time.perf_counter() - started)


class TaskProgress:
    """ProgressBackend of a QgsTask: progress bar, cancel button and the message log.

    Called from the task's worker thread; it only uses thread-safe calls (setProgress,
    isCanceled, QgsMessageLog, queued signals).
    """

    def __init__(self, task: "RsVlmTask") -> None:
        self._task = task
        self._pace = Pace()
        self._stage = ""
        self.warnings: list[str] = []

    def set_stage(self, stage: str) -> None:  # noqa: D102
        self._stage = stage
        self._task.stageChanged.emit(stage)
        QgsMessageLog.logMessage(stage, LOG_TAG, Qgis.MessageLevel.Info)

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        self._task.setProgress(100.0 * max(0.0, min(1.0, fraction)))
        reading = self._pace.update(fraction)  # the log: a line per 10 % or 30 s (core/pace.py)
        if reading is not None:
            QgsMessageLog.logMessage(reading.line(self._stage), LOG_TAG, Qgis.MessageLevel.Info)

    def is_canceled(self) -> bool:  # noqa: D102
        return self._task.isCanceled()

    def info(self, message: str) -> None:  # noqa: D102
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Info)

    def warn(self, message: str) -> None:  # noqa: D102
        if message not in self.warnings:
            self.warnings.append(message)
        QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Warning)


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
        super().__init__(title, QgsTask.Flag.CanCancel)
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
            QgsMessageLog.logMessage(details, LOG_TAG, Qgis.MessageLevel.Critical)
            self.error = ("RS-VLM stopped on an unexpected error; the details are in the RS-VLM tab of the "
                          "Log Messages panel. Please report them.")
        return False

    def finished(self, result: bool) -> None:  # noqa: D401 - Qt naming
        """Hand the outcome back (main thread): signals and the message bar."""
        if result and self.outcome is not None:
            for message in self.progress.warnings:
                self._message(message, Qgis.MessageLevel.Warning)
            self.jobFinished.emit(self.outcome)
            return
        if self.isCanceled() or self.cancelled:
            self.cancelled = True
            message = self.error or CancelledError().args[0]
            self._message(message, Qgis.MessageLevel.Info)
        else:
            message = self.error or "The job failed without a message; see the RS-VLM log."
            self._message(message, Qgis.MessageLevel.Critical)
        self.jobFailed.emit(message)

    def _message(self, text: str, level) -> None:
        bar = self.iface.messageBar() if self.iface is not None and hasattr(self.iface, "messageBar") else None
        if bar is not None:
            bar.pushMessage("RS-VLM", text, level=level, duration=0 if level == Qgis.MessageLevel.Critical else 8)
        QgsMessageLog.logMessage(text, LOG_TAG, level)
