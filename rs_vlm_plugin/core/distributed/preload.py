"""``dask worker ADDRESS --preload rs_vlm_plugin.core.distributed.preload``.

A worker started this way imports the core and its runtime dependencies as it starts (a node
without them fails to start, with the ImportError in its log, instead of failing tasks later)
and logs the core's version; with ``RSVLM_PRELOAD_MODEL=DIR`` in its environment it also loads
that model bundle into its cache, so that the first tasks do not wait for it. The client checks
every worker again before a batch (:mod:`.preflight`), preloaded or not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from . import tasks  # noqa: F401 - the import is the check: the core and numpy, onnxruntime, shapely
from .preflight import local_core

LOG = logging.getLogger("distributed.worker")
MODEL_VARIABLE = "RSVLM_PRELOAD_MODEL"
"""Environment variable naming a model bundle folder the worker loads when it starts."""


def dask_setup(worker) -> None:
    """Called by dask when the worker starts."""
    core = local_core()
    LOG.info("RS-VLM core %s (sources sha256 %s...) ready", core["version"], core["digest"][:12])
    folder = os.environ.get(MODEL_VARIABLE)
    if folder:
        from ..bundle import ModelBundle, RuntimeOptions
        from .worker_cache import worker_threads
        from .worker_cache import ModelRef, remember

        bundle = ModelBundle.load(Path(folder), RuntimeOptions("auto", worker_threads(task_threads=worker.state.nthreads)))
        ref = ModelRef.of(bundle)
        remember(ref, bundle)
        _ = bundle.image_session
        LOG.info("RS-VLM model %s (fingerprint %s...) loaded", bundle.folder.name, ref.fingerprint[:12])
