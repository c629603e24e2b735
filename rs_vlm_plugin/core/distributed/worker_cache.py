"""The model on each worker: loaded once per process, keyed by its fingerprint, never pickled per task.

A task gets a :class:`ModelRef` (a folder and a fingerprint, a few hundred bytes); the first
task on a worker loads the bundle and its ONNX sessions, later tasks reuse them.
:func:`preload_plugin` makes a ``WorkerPlugin`` that loads it when a worker joins, so the first
tasks do not all wait for it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..bundle import ModelBundle, RuntimeOptions, default_bundle_dir
from ..errors import RsVlmError
from ..jobs.identity import model_fingerprint

_CACHE: dict[tuple[str, str], ModelBundle] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelRef:
    """Which model a task needs, small enough to send with every task.

    Attributes:
        folder: The bundle folder as the client sees it; a worker that has no such folder uses
            its own default bundle, which must then have the same fingerprint.
        fingerprint: :func:`identity.model_fingerprint` of the bundle.
        device: onnxruntime device ("auto", "cpu", "cuda").
        threads: onnxruntime threads per task (0: the worker's cores shared among its task threads).
    """

    folder: str
    fingerprint: str
    device: str = "auto"
    threads: int = 0

    @classmethod
    def of(cls, bundle: ModelBundle, threads: int = 0) -> "ModelRef":
        """The reference of a loaded bundle."""
        return cls(str(Path(bundle.folder).resolve()), model_fingerprint(bundle), bundle.options.device, threads)


def cached_bundle(ref: ModelRef) -> ModelBundle:
    """The bundle of ``ref`` in this process, loaded on first use.

    Raises:
        RsVlmError: This machine has no bundle with that fingerprint.
    """
    key = (ref.fingerprint, ref.device)
    with _LOCK:
        bundle = _CACHE.get(key)
        if bundle is None:
            bundle = _load(ref)
            _CACHE[key] = bundle
    return bundle


def _load(ref: ModelRef) -> ModelBundle:
    threads = ref.threads or worker_threads()
    for folder in dict.fromkeys((Path(ref.folder), default_bundle_dir())):
        if (folder / "manifest.json").is_file():
            bundle = ModelBundle.load(folder, RuntimeOptions(ref.device, threads))
            if model_fingerprint(bundle) == ref.fingerprint:
                return bundle
    raise RsVlmError(f"A worker has no copy of the model {Path(ref.folder).name} (looked in {ref.folder} and its "
                     "default bundle, by fingerprint); install the same model on every worker machine, at the same "
                     "path or as its default model.")


def cached_count() -> int:
    """How many bundles this process holds (for tests and the benchmark)."""
    return len(_CACHE)


def preload_plugin(ref: ModelRef):
    """A ``dask.distributed.WorkerPlugin`` that loads the model (and its image session) when a
    worker starts or joins; errors are left to the first task, which reports them by raster."""
    from dask.distributed import WorkerPlugin

    class ModelPreload(WorkerPlugin):
        name = f"rsvlm-model-{ref.fingerprint[:12]}"

        def __init__(self, model: ModelRef) -> None:
            self.model = model

        def setup(self, worker) -> None:  # noqa: D102
            try:
                _ = cached_bundle(self.model).image_session
            except Exception:  # noqa: BLE001 - the task that needs it says what is wrong
                pass

    return ModelPreload(ref)


def remember(ref: ModelRef, bundle: ModelBundle) -> None:
    """Put a bundle already loaded in this process into the cache (tasks run here reuse it)."""
    with _LOCK:
        _CACHE.setdefault((ref.fingerprint, ref.device), bundle)


def worker_threads(cores: int | None = None, task_threads: int | None = None) -> int:
    """onnxruntime threads for a task on this worker: the cores shared among its task threads."""
    cores = cores or os.cpu_count() or 1
    if task_threads is None:
        try:
            from dask.distributed import get_worker

            task_threads = get_worker().state.nthreads
        except (ImportError, ValueError, AttributeError):
            task_threads = 1
    return max(1, cores // max(1, task_threads))
