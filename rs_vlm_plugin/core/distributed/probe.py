"""What a machine of the cluster has: run on the scheduler and on each worker before any raster goes out.

This module imports nothing but the standard library at module level and is sent to the cluster by
value (:func:`.preflight.check_cluster`), so that it runs on a machine that cannot import
``rs_vlm_plugin`` at all and says so, instead of failing to unpickle. Its results are plain dicts.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import socket
import sys
from pathlib import Path

CORE_MODULE = "rs_vlm_plugin.core.distributed.tasks"
"""The module every task needs: importing it imports the core and its runtime dependencies."""


def is_virtual_path(path: str) -> bool:
    """Whether GDAL reads the path itself (``/vsicurl/…``, ``/vsis3/…``, ``https://…``): no file to check."""
    return path.startswith("/vsi") or "://" in path


def core_digest(package: Path) -> str:
    """sha256 of the core's sources (``__init__.py`` and every ``core/**/*.py``, with their relative
    paths): the same in a checkout, the plugin zip and the wheel made from them."""
    digest = hashlib.sha256()
    files = [package / "__init__.py", *sorted((package / "core").rglob("*.py"))]
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode("utf-8") + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def describe_core() -> dict:
    """This process's RS-VLM core: version and source digest, or why it does not import.

    Returns:
        ``host``, ``python`` and ``distributed`` (dask.distributed's version) always; ``version``
        and ``digest`` when the core imports, else ``error`` (the exception, one line).
    """
    found: dict = {"host": socket.gethostname(), "python": sys.executable, "distributed": _version("distributed")}
    try:
        spec = importlib.util.find_spec("rs_vlm_plugin")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return {**found, "error": "ModuleNotFoundError: No module named 'rs_vlm_plugin'"}
    try:
        importlib.import_module(CORE_MODULE)
        package = Path(next(iter(spec.submodule_search_locations)))
        return {**found, "version": sys.modules["rs_vlm_plugin"].__version__, "digest": core_digest(package)}
    except Exception as exc:  # noqa: BLE001 - reported as a sentence by the client
        return {**found, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def check_worker(digest: str, model: dict, paths: list[str]) -> dict:
    """On a worker: the core (as :func:`describe_core`), then, if its digest is ``digest``, the model
    loaded into the worker's cache and the rasters it cannot read.

    Args:
        digest: The client's :func:`core_digest`.
        model: The fields of a :class:`.worker_cache.ModelRef` (a dict: it unpickles anywhere).
        paths: The rasters this client can read; virtual paths are left to GDAL.

    Returns:
        :func:`describe_core`'s dict, with ``model_error`` (a sentence) or ``fingerprint``, and
        ``unreadable`` (the paths of ``paths`` this worker cannot read).
    """
    found = describe_core()
    if "error" in found or found["digest"] != digest:
        return found
    try:
        cache = importlib.import_module("rs_vlm_plugin.core.distributed.worker_cache")  # sent by value: no relative import
        identity = importlib.import_module("rs_vlm_plugin.core.jobs.identity")
        found["fingerprint"] = identity.model_fingerprint(cache.cached_bundle(cache.ModelRef(**model)))
    except Exception as exc:  # noqa: BLE001 - the model's own sentence, or the exception in one line
        found["model_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    found["unreadable"] = [p for p in paths if not is_virtual_path(p) and not os.access(p, os.R_OK)]
    return found


def _version(distribution: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8
        return None
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
