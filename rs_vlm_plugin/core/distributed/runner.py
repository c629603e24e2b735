"""The gather loop: submit the tasks, take results as they finish, assemble each raster once all
its chunks are in, report progress across the cluster, stop on Cancel.

The same loop drives a Dask client (:class:`DaskExecutor`) or this process (:class:`SerialExecutor`,
no dask needed). A worker that dies mid-run costs nothing: the scheduler runs its tasks again
elsewhere and each task's result is taken once, by its future.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..bundle import ModelBundle
from ..errors import CancelledError, RsVlmError
from ..progress import ProgressBackend, check_canceled
from .cluster import ClusterError, DaskAddress, cluster_problem, connect
from .manifest import Manifest
from .outputs import RasterOutcome, assemble
from .preflight import check_cluster
from .tasks import RasterJob, encode_chunk, plan_raster
from .worker_cache import ModelRef, preload_plugin, remember

POLL_S = 0.25
"""How often the loop looks at the cancel flag while it waits for tasks."""


class SerialExecutor:
    """Runs the tasks here, one at a time, in the order submitted (no dask)."""

    workers = 1

    def __init__(self, bundle: ModelBundle, model: ModelRef) -> None:
        remember(model, bundle)
        self._queue: list[_Call] = []

    def submit(self, fn: Callable, *args, priority: int = 0) -> "_Call":  # noqa: D102
        call = _Call(fn, args)
        self._queue.append(call)
        return call

    def wait_any(self, handles: list, timeout: float) -> list:  # noqa: D102
        call = next(c for c in self._queue if c in handles)
        self._queue.remove(call)
        try:
            call.value = call.fn(*call.args)
        except Exception as exc:  # noqa: BLE001 - reported by result(), as a future would
            call.error = exc
        return [call]

    def result(self, handle: "_Call"):  # noqa: D102
        if handle.error is not None:
            raise handle.error
        return handle.value

    def cancel(self, handles: list) -> None:  # noqa: D102
        self._queue = [c for c in self._queue if c not in handles]


@dataclass(eq=False)
class _Call:
    fn: Callable
    args: tuple
    value: Any = None
    error: BaseException | None = None


class DaskExecutor:
    """Runs the tasks on a ``dask.distributed.Client``; the model is preloaded on every worker.

    A failure that is the cluster's (:func:`.cluster.cluster_problem`: a lost scheduler, a machine
    without the core) raises :class:`.cluster.ClusterError`, which stops the batch instead of
    blaming the raster.
    """

    def __init__(self, client, model: ModelRef, address: str = "") -> None:
        self.client = client
        self.address = address or str(getattr(client.scheduler, "address", "the scheduler"))
        register = getattr(client, "register_plugin", None) or client.register_worker_plugin
        register(preload_plugin(model))

    @property
    def workers(self) -> int:  # noqa: D102
        return len(self.client.scheduler_info().get("workers", {}))

    def submit(self, fn: Callable, *args, priority: int = 0):  # noqa: D102
        return self.client.submit(fn, *args, pure=False, priority=priority)

    def wait_any(self, handles: list, timeout: float) -> list:  # noqa: D102
        from dask.distributed import wait

        try:
            with self.client.as_current():  # the client is never made the process's default
                wait(handles, timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        except BaseException as exc:  # asyncio's CancelledError is not an Exception
            raise cluster_problem(exc, self.address, self.client) or exc
        return [f for f in handles if f.done()]

    def result(self, handle):  # noqa: D102
        try:
            return handle.result()
        except BaseException as exc:
            problem = cluster_problem(exc, self.address, self.client)
            if problem is not None:
                raise problem from None
            raise

    def cancel(self, handles: list) -> None:  # noqa: D102
        if handles and self.client.status == "running":  # a lost scheduler has nothing left to cancel
            self.client.cancel(handles)


@contextmanager
def cluster_executor(address: DaskAddress, model: ModelRef, paths: list[str]) -> Iterator[DaskExecutor]:
    """A :class:`DaskExecutor` on the cluster at ``address``, connected and checked
    (:func:`.preflight.check_cluster`: the core, the model and the rasters on every machine) before
    any task is submitted.

    Raises:
        RsVlmError: dask missing, the scheduler unreachable or without workers, or a machine of the
            cluster not ready (one sentence each).
    """
    with connect(address) as client:
        check_cluster(client, model, paths, str(address))
        yield DaskExecutor(client, model, str(address))


@dataclass
class BatchOutcome:
    """What a batch did.

    Attributes:
        outcomes: Finished rasters by position in the job list.
        failures: Why a raster failed (a sentence), by position.
        resumed: Positions of the rasters taken from the manifest of an earlier run.
        tiles: Tiles encoded in this run.
    """

    jobs: list[RasterJob]
    outcomes: dict[int, RasterOutcome] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    resumed: list[int] = field(default_factory=list)
    tiles: int = 0
    seconds: float = 0.0
    workers: int = 1

    def finished(self) -> list[RasterOutcome]:
        """The finished rasters in input order."""
        return [self.outcomes[j] for j in sorted(self.outcomes)]


def run_batch(jobs: list[RasterJob], bundle: ModelBundle, executor, progress: ProgressBackend, model: ModelRef,
              manifest: Manifest | None = None) -> BatchOutcome:
    """Plan, encode and assemble every raster; a raster that fails is reported and the others go on.

    Raises:
        CancelledError: The user cancelled: no task is submitted any more and the running ones
            are cancelled; the rasters finished so far stay in the manifest.
    """
    start = time.perf_counter()
    result = BatchOutcome(jobs, workers=executor.workers)
    pending: dict[Any, tuple] = {}
    plans: dict[int, Any] = {}
    chunks: dict[int, list] = defaultdict(list)
    done_tiles: dict[int, int] = defaultdict(int)
    for j, job in enumerate(jobs):
        stored = manifest.outcome(job.path) if manifest is not None else None
        if stored is not None:
            result.outcomes[j] = stored
            result.resumed.append(j)
    if result.resumed:
        progress.info(f"{len(result.resumed)} of {len(jobs)} rasters were done by an earlier run; they are not done "
                      "again.")

    def report() -> None:
        n = len(jobs)
        share = sum(1.0 if j in result.outcomes or j in result.failures else
                    0.1 + 0.9 * done_tiles[j] / max(1, len(plans[j].tiles)) if j in plans else 0.0 for j in range(n))
        total = sum(len(p.tiles) for p in plans.values())
        progress.set_stage(f"{len(result.outcomes) + len(result.failures)} of {n} rasters, "
                           f"{sum(done_tiles.values()):,} of {total:,} planned tiles done on {result.workers} "
                           f"worker{'s' if result.workers != 1 else ''}")
        progress.set_fraction(0.95 * share / max(1, n))

    def fail(j: int, exc: BaseException) -> None:
        result.failures[j] = failure_sentence(jobs[j], exc)
        progress.info(f"Failed: {jobs[j].name}: {result.failures[j]} The others go on.")
        mine = [h for h, tag in pending.items() if tag[1] == j]
        executor.cancel(mine)
        for h in mine:
            pending.pop(h)

    try:
        for j, job in enumerate(jobs):
            check_canceled(progress)
            if j not in result.outcomes:
                pending[executor.submit(plan_raster, job, priority=-j)] = ("plan", j)
        report()
        while pending:
            check_canceled(progress)
            for handle in executor.wait_any(list(pending), POLL_S):
                if handle not in pending:
                    continue
                kind, j = pending.pop(handle)
                try:
                    value = executor.result(handle)
                except ClusterError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one raster's failure must not stop the batch
                    fail(j, exc)
                    continue
                if kind == "plan":
                    plans[j] = value
                    for first, end in value.chunks:
                        check_canceled(progress)
                        pending[executor.submit(encode_chunk, jobs[j], model, first, value.tiles[first:end],
                                                priority=-j)] = ("chunk", j)
                else:
                    chunks[j].append(value)
                    end = next(e for f, e in plans[j].chunks if f == value.first)
                    done_tiles[j] += end - value.first
                    result.tiles += len(value.rows)
                    if len(chunks[j]) == len(plans[j].chunks):
                        try:
                            result.outcomes[j] = assemble(jobs[j], plans[j], chunks.pop(j), bundle, progress)
                        except RsVlmError as exc:
                            fail(j, exc)
                            continue
                        if manifest is not None:
                            manifest.add(jobs[j].path, result.outcomes[j])
                report()
    except BaseException:
        executor.cancel(list(pending))
        raise
    result.seconds = time.perf_counter() - start
    return result


def failure_sentence(job: RasterJob, exc: BaseException) -> str:
    """Why a raster failed, for the user."""
    if isinstance(exc, RsVlmError) and not isinstance(exc, CancelledError):
        return str(exc)
    if type(exc).__name__ == "KilledWorker":
        return ("the workers that tried it died each time (out of memory?); give the workers more memory or "
                "fewer threads, then run the same command again to finish it.")
    return f"could not be processed ({type(exc).__name__}: {exc}); check that the file opens in QGIS."
