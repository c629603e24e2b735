"""Entry points for callers other than the command line (the Processing algorithms): caption
files or index one file on a Dask cluster, with a progress/cancel object."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..bundle import ModelBundle, RuntimeOptions, default_bundle_dir
from ..planning.dris import PlanConfig
from ..geometry import Extent
from ..progress import ProgressBackend
from ..validation import model_tile_size
from .cluster import parse_address
from .outputs import write_archive_index
from .runner import BatchOutcome, cluster_executor, run_batch
from .tasks import RasterJob
from .worker_cache import ModelRef

LOCAL_ONLY = ("{name} stays in this process: Dask workers open raster files themselves, and {name} is not a local "
              "file (a web, database or in-memory layer can only be read through this QGIS).")
"""Why a layer is not sent to the cluster."""


def _setup(address: str, model_dir: str | Path | None, plan: PlanConfig):
    address_ = parse_address(address)
    folder = Path(model_dir) if model_dir else default_bundle_dir()
    bundle = ModelBundle.load(folder, RuntimeOptions())
    return address_, bundle, ModelRef.of(bundle), dataclasses.replace(plan, tile_size=model_tile_size(folder))


def caption_files(address: str, files: list[tuple[Path, str]], plan: PlanConfig, model_dir: str | Path | None,
                  progress: ProgressBackend) -> BatchOutcome:
    """Caption raster files (``(path, name)``) on the cluster at ``address``; failures by position.

    Raises:
        RsVlmError: A wrong address, dask missing, the scheduler unreachable (before any work).
        CancelledError: The user cancelled (running tasks are cancelled).
    """
    address_, bundle, model, plan = _setup(address, model_dir, plan)
    jobs = [RasterJob(str(path), name, "describe", plan) for path, name in files]
    with cluster_executor(address_, model, [job.path for job in jobs]) as executor:
        return run_batch(jobs, bundle, executor, progress, model)


def index_file(address: str, path: Path, name: str, output: Path, plan: PlanConfig, model_dir: str | Path | None,
               progress: ProgressBackend, source_id: str | None = None,
               extent: Extent | None = None) -> tuple[Path, int]:
    """Build the index of one raster file on the cluster (chunked); returns the index and its tile count.

    Raises:
        RsVlmError: As :func:`caption_files`, or the raster failed (its sentence).
    """
    start = time.perf_counter()
    address_, bundle, model, plan = _setup(address, model_dir, plan)
    jobs = [RasterJob(str(path), name, "index", plan, extent=extent)]
    with cluster_executor(address_, model, [str(path)]) as executor:
        outcome = run_batch(jobs, bundle, executor, progress, model)
    if outcome.failures:
        from ..errors import RsVlmError

        raise RsVlmError(outcome.failures[0])
    (done,) = outcome.finished()
    if source_id:
        done.meta["source_id"] = source_id
    return write_archive_index(output, [done], progress, start, {}), len(done.tiles)
