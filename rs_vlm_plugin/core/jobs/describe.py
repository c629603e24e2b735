"""Describe: captions of an extent at three levels (the whole view, each region, each fine tile)."""

from __future__ import annotations

import time

from ..bundle import ModelBundle
from ..encoding.encode import encode_extent
from ..geometry import Extent
from ..locate.guided import guided_encoding
from ..progress import NullProgress, ProgressBackend
from ..raster import RasterSource
from .caption_stream import CaptionStream
from .captioning import caption_tiles
from .config import JobConfig
from .query import guide_scorer
from .results import DescribeResult


def describe(source: RasterSource, bundle: ModelBundle, extent: Extent | None = None,
             config: JobConfig | None = None, progress: ProgressBackend | None = None) -> DescribeResult:
    """Caption an extent of a raster: the global view, each region and each fine tile.

    Args:
        source: Where pixels come from (a file through rasterio or a QGIS layer's provider).
        bundle: The model.
        extent: Part of the raster to describe, in the raster's CRS; None for all of it.
        config: Job settings.
        progress: Receives stages and progress; asked for cancellation between batches.

    Raises:
        RsVlmError: The extent misses the raster, or the model cannot run.
        CancelledError: The user cancelled.
    """
    config = config or JobConfig()
    progress = progress or NullProgress()
    # Captions are decoded block by block as the tiles are encoded, so the job never holds every
    # tile's tokens (memory stays flat in the raster's size); the captions are the same.
    stream = CaptionStream(bundle, progress)
    guide = guide_scorer(bundle, config)
    if guide is not None:  # a text guides the plan (JobConfig.guide_query): coarse first, refined where it scores
        encoding = guided_encoding(source, bundle, extent, config, guide, progress, every_tier=True,
                                   text=config.guide_query.strip())
    else:
        encoding = encode_extent(source, bundle, extent, config, progress, on_batch=stream.add)
    progress.set_stage("Composing captions")
    t0 = time.perf_counter()
    if bundle.has_decoder and guide is None:
        progress.set_stage(f"Writing captions for {stream.pending} tiles (the other {len(encoding.tiles) - stream.pending} "
                           "were written while encoding)")
    decoded = stream.finish() if guide is None else None
    records = caption_tiles(encoding, bundle, config.top_concepts, source.name, progress, decoded=decoded)
    encoding.timings["caption_s"] = time.perf_counter() - t0
    progress.set_fraction(1.0)
    encoding.timings["routing"] = encoding.routing()
    return DescribeResult(records, encoding.plan, source.georef.crs_wkt, list(source.warnings), encoding.timings)
