"""Connecting to a Dask cluster: the ``--dask`` address, a local cluster, the sentences for
a missing dask or a scheduler that does not answer."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ..errors import RsVlmError
from .worker_cache import worker_threads  # noqa: F401 (the cluster's callers take it from here)

DASK_MISSING = ("Running on a Dask cluster needs dask.distributed, which is not installed; install it with "
                "`python -m pip install \"dask[distributed]\"` (the same version on every machine of the cluster), "
                "or leave out the scheduler address to run in this process.")
CONNECT_TIMEOUT_S = 10.0
"""How long to wait for a scheduler to answer before saying so."""


class ClusterError(RsVlmError):
    """The cluster, not a raster, is at fault (a lost scheduler, a worker without the core): the
    batch stops, the rasters finished so far are kept for a rerun."""


@dataclass(frozen=True)
class DaskAddress:
    """Where the work goes.

    Attributes:
        scheduler: A scheduler address (``tcp://host:8786``), or None for a local cluster.
        local_workers: Worker processes of the local cluster (``local:N``).
    """

    scheduler: str | None = None
    local_workers: int = 0

    def __str__(self) -> str:
        return self.scheduler or f"local:{self.local_workers}"


def parse_address(text: str) -> DaskAddress:
    """``tcp://host:port`` (or ``tls://``, ``ws://``, ``host:port``) or ``local:N``.

    Raises:
        RsVlmError: The text is neither.
    """
    value = (text or "").strip()
    local = re.fullmatch(r"local(?::(\d+))?", value)
    if local:
        workers = int(local.group(1) or os.cpu_count() or 1)
        if not 1 <= workers <= 256:
            raise RsVlmError(f"A local cluster needs 1 to 256 worker processes, not {workers}; give local:N, "
                             "for example local:2.")
        return DaskAddress(local_workers=workers)
    if re.fullmatch(r"(?:(?:tcp|tls|ws|wss|inproc|ucx)://)?[\w.\-\[\]:]+:\d+", value):
        return DaskAddress(scheduler=value if "://" in value else f"tcp://{value}")
    raise RsVlmError(f"{text!r} is not a Dask scheduler address; give tcp://HOST:PORT (a running `dask scheduler`, "
                     "port 8786 by default) or local:N for N worker processes on this machine.")


def require_dask():
    """The ``dask.distributed`` module, or the sentence that says how to install it."""
    try:
        import dask.distributed as dd
    except ImportError as exc:
        raise RsVlmError(DASK_MISSING) from exc
    return dd


def unreachable(address: DaskAddress, detail: str = "") -> RsVlmError:
    """The sentence for a scheduler that does not answer."""
    why = f" ({detail})" if detail else ""
    return RsVlmError(f"The Dask scheduler at {address} does not answer within {CONNECT_TIMEOUT_S:.0f} s{why}; "
                      "start it (`dask scheduler` on that machine, then `dask worker "
                      f"{address}` on each worker machine), check the address and the firewall, or use local:N.")


@contextmanager
def connect(address: DaskAddress, timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator:
    """A ``dask.distributed.Client`` for the address (closed, with its local cluster, on exit).

    A local cluster has ``local_workers`` processes of one thread each, so that each task's
    onnxruntime session may use the machine's cores divided among the workers
    (:func:`worker_threads`) without oversubscribing them; dask's nanny already limits
    OpenMP/BLAS threads of each worker to 1.

    Raises:
        RsVlmError: dask is not installed, or the scheduler does not answer (before any work).
    """
    dd = require_dask()
    cluster = None
    if address.scheduler is None:
        cluster = dd.LocalCluster(n_workers=address.local_workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=50)
        target = cluster
    else:
        target = address.scheduler
    try:
        try:
            client = dd.Client(target, timeout=f"{timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise unreachable(address, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__) from None
        try:
            if address.scheduler is not None:
                try:
                    client.wait_for_workers(1, timeout=timeout_s)
                except (TimeoutError, OSError):
                    raise RsVlmError(f"The Dask scheduler at {address} has no workers; start `dask worker "
                                     f"{address}` on the machines that should do the work.") from None
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def cluster_problem(exc: BaseException, address: str, client=None) -> ClusterError | None:
    """The sentence for a task failure that is the cluster's fault, or None (the raster's).

    Args:
        exc: What a task's future raised (or waiting for futures raised).
        address: The scheduler, for the sentence.
        client: The client, whose status tells a lost scheduler from a cancelled task.
    """
    from .preflight import install_hint
    from ... import __version__

    text = str(exc)
    if isinstance(exc, ImportError) or "deserializ" in text.lower():
        return ClusterError(f"A machine of the Dask cluster at {address} cannot load RS-VLM's tasks "
                            f"({type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}); "
                            f"{install_hint(__version__)}.")
    lost = "scheduler-connection-lost" in text or (client is not None and client.status not in ("running", "newly-created"))
    if lost and (isinstance(exc, (OSError, TimeoutError)) or type(exc).__name__.endswith("CancelledError")
                 or type(exc).__name__ == "CommClosedError"):
        return ClusterError(f"The Dask scheduler at {address} stopped answering mid-run; restart it (and its "
                            "workers), then run the same command again: the rasters finished so far are kept "
                            "and not done again.")
    return None
