"""The one entry from a job's name and settings to the job: ``run_job("search", source, bundle, text, ...)``.

The command line, the panel's task and Processing name a job by its kind and pass its text (a
search text, a class list or a question) as it was typed; this turns that into the call.
"""

from __future__ import annotations

from ..bundle import ModelBundle
from ..geometry import Extent
from ..progress import ProgressBackend
from ..raster import RasterSource
from .ask import ask
from .classify import classify, split_classes
from .config import JobConfig
from .describe import describe
from .results import AnyResult
from .search import search

JOB_KINDS = ("describe", "search", "classify", "ask")


def run_job(kind: str, source: RasterSource, bundle: ModelBundle, text: str | None = None,
            extent: Extent | None = None, config: JobConfig | None = None,
            progress: ProgressBackend | None = None) -> AnyResult:
    """Run one job on an extent of a raster.

    Args:
        kind: One of :data:`JOB_KINDS`.
        text: What the job is about: the search text, the comma-separated class list (empty: the
            knowledge base's scene concepts) or the question; Describe takes none.
        extent: Part of the raster, in its CRS; None for all of it.
        config: The job's settings (None: the defaults).
        progress: Receives stages and progress; asked for cancellation between batches.

    Raises:
        ValueError: ``kind`` names no job.
        RsVlmError: A problem the user can fix (the message says how).
        CancelledError: The user cancelled.
    """
    if kind == "describe":
        return describe(source, bundle, extent, config, progress)
    if kind == "search":
        return search(source, bundle, text or "", extent, config, progress)
    if kind == "classify":
        return classify(source, bundle, split_classes(text), extent, config, progress)
    if kind == "ask":
        return ask(source, bundle, text or "", extent, config, progress)
    raise ValueError(f"Unknown job kind {kind!r}; expected one of {', '.join(JOB_KINDS)}.")
