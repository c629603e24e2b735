"""Before any raster goes to a cluster: the scheduler and every worker import this very core, each
worker loads the model, and reads the rasters; otherwise one sentence says what to install where.

A cluster this project did not start (``dask worker`` on other machines, dask-jobqueue, a Dask
gateway) has only what was installed there. Without these checks a worker or scheduler lacking
``rs_vlm_plugin`` fails every task at unpickling, and each raster would be reported as broken.
The probes (:mod:`.probe`) travel by value, so they run where the core does not import.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import RsVlmError
from . import probe
from .worker_cache import ModelRef

WHEEL_COMMAND = "python3 build.py wheel"
"""How a checkout makes the wheel that every machine of a cluster installs."""


def wheel_name(version: str) -> str:
    """The file name of the core's wheel for a version (``build.py wheel`` writes it to ``dist/``)."""
    return f"rs_vlm_core-{version}-py3-none-any.whl"


def install_hint(version: str) -> str:
    """The clause that says how to put this core on a machine."""
    return (f"install this version there (`{WHEEL_COMMAND}` in the checkout, then `python -m pip install "
            f"{wheel_name(version)}` on the scheduler and on every worker machine) and restart it")


def local_core() -> dict:
    """This process's core, as :func:`probe.describe_core` tells a remote one."""
    package = Path(__file__).resolve().parents[2]
    from ... import __version__

    return {"version": __version__, "digest": probe.core_digest(package),
            "distributed": probe._version("distributed")}


@contextmanager
def _by_value() -> Iterator[None]:
    """Pickle the probe module's functions by value while the probes are sent."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(probe)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(probe)


def check_cluster(client, model: ModelRef, paths: list[str], address: str) -> int:
    """Check the scheduler and every worker of ``client`` before any task is submitted.

    Args:
        client: A connected ``dask.distributed.Client`` with at least one worker.
        model: The model every task will ask for.
        paths: The batch's rasters as the tasks will open them.
        address: The scheduler address, for the sentences.

    Returns:
        The number of workers checked.

    Raises:
        RsVlmError: One sentence: which machine lacks the core, runs another version of it or of
            dask.distributed, has no copy of the model, or cannot read the rasters.
    """
    mine = local_core()
    readable = [p for p in paths if probe.is_virtual_path(p) or os.access(p, os.R_OK)]
    with _by_value():
        scheduler = client.run_on_scheduler(probe.describe_core)
        workers = client.run(probe.check_worker, mine["digest"], dataclasses.asdict(model), readable,
                             on_error="return")
    problem = _core_problem(f"The Dask scheduler at {address}", scheduler, mine)
    if problem:
        raise RsVlmError(problem)
    for worker, found in sorted(workers.items()):
        if isinstance(found, BaseException):
            raise RsVlmError(f"The Dask worker {worker} failed the RS-VLM check ({type(found).__name__}: {found}); "
                             f"{install_hint(mine['version'])}.")
        problem = _core_problem(f"The Dask worker {worker}", found, mine)
        if problem:
            raise RsVlmError(problem)
        if "model_error" in found:
            raise RsVlmError(f"The Dask worker {worker} (host {found['host']}) cannot load the model "
                             f"{Path(model.folder).name} with SHA-256 fingerprint {model.fingerprint[:12]}... "
                             f"({found['model_error'].rstrip('.')}); put a copy of {model.folder} at the same path on "
                             "every worker machine (shared storage), or install it there as the default model "
                             "(`python -m rs_vlm_plugin models install`).")
        if found["unreadable"]:
            first, more = found["unreadable"][0], len(found["unreadable"]) - 1
            others = f" and {more} more of the {len(readable)} rasters" if more else ""
            raise RsVlmError(f"The Dask worker {worker} (host {found['host']}) cannot read {first}{others}, which "
                             "this machine reads; put the rasters on storage every worker mounts at the same path "
                             "(NFS, Lustre, SMB), or give GDAL paths the workers can read (/vsicurl/https://..., "
                             "/vsis3/...).")
    return len(workers)


def _core_problem(who: str, found: dict, mine: dict) -> str | None:
    """The sentence for a machine without this core or dask.distributed version, or None."""
    where = f"{who} (host {found.get('host', '?')}, Python {found.get('python', '?')})"
    if "error" in found:
        return (f"{where} cannot import RS-VLM's core ({found['error']}); {install_hint(mine['version'])}.")
    if found["digest"] != mine["digest"]:
        same = " (a different build of the same version)" if found["version"] == mine["version"] else ""
        return (f"{where} runs RS-VLM core {found['version']}{same}, this machine {mine['version']}; "
                f"{install_hint(mine['version'])}.")
    if found.get("distributed") != mine["distributed"]:
        return (f"{where} runs dask.distributed {found.get('distributed')}, this machine {mine['distributed']}; "
                f"install `dask[distributed]=={mine['distributed']}` there and restart it.")
    return None
