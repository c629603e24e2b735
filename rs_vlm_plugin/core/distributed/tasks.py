"""The pure tasks of a batch: plan one raster, then encode (and caption) one chunk of its tiles.

Each task opens the raster itself (no GDAL handle crosses processes) and gets the model from
the worker's cache (:mod:`.worker_cache`). A raster is planned once, exactly as
:func:`encoding.encode.encode_extent` plans it (one coarse read: cheap even for a 100k x 100k mosaic);
its tiles are then cut into chunks of whole ONNX batches, in the plan's tile order, so every
batch the image tower sees holds the same tiles as in a single-process run and the outputs are
the same bit for bit (onnxruntime's and BLAS's results change in the last bit with the batch's
composition). The knowledge-base ranking is left to the writer, which ranks all of a raster's
tiles at once as :func:`jobs.captioning.caption_tiles` does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field

import numpy as np

from ..planning.dris import PlanConfig, TilePlan
from ..errors import RsVlmError
from ..geometry import Extent
from ..jobs.identity import source_identity
from ..jobs.caption_stream import CAPTION_BLOCK, CaptionStream
from ..encoding.encode import encode_tiles
from ..encoding.tiles import EncodedTile, make_plan, tiles_to_encode
from ..progress import NullProgress
from ..raster import open_raster
from .worker_cache import ModelRef, cached_bundle

KINDS = ("describe", "index")
INDEX_TIERS = ("embedding", "regions")


@dataclass(frozen=True)
class RasterJob:
    """One raster of a batch and what to do with it.

    Attributes:
        path: The raster file, as every worker sees it (a shared folder on a real cluster).
        name: The raster's name in records and messages (the file name without extension).
        kind: "describe" (captions at three levels) or "index" (global and region tokens).
        plan: The planner's settings, tile size already the model's input size.
        batch_size: Tiles per ONNX batch, as :class:`jobs.config.JobConfig`.
        top_concepts: Concepts kept per caption.
        extent: Part of the raster (its CRS); None for all of it.
        chunk_tiles: Tiles per chunk task (rounded to whole batches and caption blocks).
    """

    path: str
    name: str
    kind: str = "describe"
    plan: PlanConfig = field(default_factory=PlanConfig)
    batch_size: int = 16
    top_concepts: int = 3
    extent: Extent | None = None
    chunk_tiles: int = 256

    def settings(self) -> str:
        """The settings that decide the output (not the raster, not the chunking), as JSON."""
        return json.dumps({"kind": self.kind, "plan": dataclasses.asdict(self.plan), "batch_size": self.batch_size,
                           "top_concepts": self.top_concepts,
                           "extent": None if self.extent is None else dataclasses.astuple(self.extent)},
                          sort_keys=True)


@dataclass
class RasterPlan:
    """What planning one raster found (sent back to the client; small).

    Attributes:
        tiles: The tiles to encode, in the order :func:`encoding.tiles.tiles_to_encode` gives them.
        chunks: ``(first, end)`` ranges of ``tiles``, one task each.
    """

    name: str
    source_id: str
    crs_wkt: str | None
    metres_per_unit: float
    plan: TilePlan
    tiles: list[EncodedTile]
    chunks: list[tuple[int, int]]
    warnings: list[str]


@dataclass
class ChunkResult:
    """What one chunk task returns.

    Attributes:
        first: Position of the chunk's first tile in the plan's tile list.
        rows: Positions (in the plan's tile list) of the tiles encoded; tiles without one valid
            pixel are skipped, as in :func:`encoding.encode.encode_extent`.
        tiers: ``embedding`` (describe: float32 for the ranking) or ``embedding`` and
            ``regions`` (index: float16, as stored), one row per encoded tile.
        captions: Decoded captions of the encoded tiles (describe with a decoder), else None.
    """

    first: int
    rows: list[int]
    tiers: dict[str, np.ndarray]
    captions: list[str] | None
    warnings: list[str]


def chunk_ranges(n_tiles: int, chunk_tiles: int, batch_size: int, captions: bool = True) -> list[tuple[int, int]]:
    """``(first, end)`` ranges covering ``n_tiles`` tiles, each of whole batches (and of whole
    caption blocks when the chunk's captions are decoded)."""
    align = batch_size * CAPTION_BLOCK // math.gcd(batch_size, CAPTION_BLOCK) if captions else batch_size
    size = max(align, chunk_tiles // align * align)
    return [(first, min(n_tiles, first + size)) for first in range(0, n_tiles, size)]


def sentences_only(task):
    """Re-raise a task's sentence-errors without their causes: the cause (a rasterio or GDAL
    error) may not unpickle in the client, and dask would then send a bare ``Exception``."""
    @functools.wraps(task)
    def run(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except RsVlmError as exc:
            error = type(exc)(str(exc))
        raise error  # outside the handler: no __context__ either
    return run


@sentences_only
def plan_raster(job: RasterJob) -> RasterPlan:
    """Plan one raster (a task): the coarse read, the DRIS plan, the tiles and their chunks.

    Raises:
        RsVlmError: The raster cannot be read, is too small or has no valid pixels.
    """
    with open_raster(job.path) as source:
        extent = source.georef.clip(job.extent or source.georef.extent)
        plan = make_plan(source, extent, job.plan, job.plan.tile_size)
        tiles = tiles_to_encode(plan, source.georef.metres_per_unit, job.plan.tile_size)
        return RasterPlan(job.name, source_identity(source), source.georef.crs_wkt, source.georef.metres_per_unit,
                          plan, tiles, chunk_ranges(len(tiles), job.chunk_tiles, job.batch_size, job.kind == "describe"),
                          list(source.warnings))


@sentences_only
def encode_chunk(job: RasterJob, model: ModelRef, first: int, tiles: list[EncodedTile]) -> ChunkResult:
    """Read and encode one chunk of a raster's tiles (a task) with :func:`pipeline.encode_tiles`,
    batch by batch as :func:`encoding.encode.encode_extent` does; for describe, decode their captions
    too, in :data:`caption_stream.CAPTION_BLOCK` blocks from the chunk's start, as
    :func:`pipeline.describe` does from the raster's start.

    Args:
        first: Position of ``tiles[0]`` in the plan's tile list (a multiple of the batch size).
        tiles: The chunk's tiles.
    """
    bundle = cached_bundle(model)
    stream = CaptionStream(bundle) if job.kind == "describe" else None
    keep = None if stream is not None else INDEX_TIERS
    position = {id(t): first + k for k, t in enumerate(tiles)}
    with open_raster(job.path) as source:
        encoded, tiers, _, _ = encode_tiles(source, bundle, tiles, job.batch_size, NullProgress(), None, keep,
                                            stream.add if stream is not None else None)
        warnings = list(source.warnings)
    rows = [position[id(t)] for t in encoded]
    if stream is not None:
        captions = stream.finish()
        tiers = {"embedding": tiers["embedding"]}  # the object tokens stay on the worker
    else:
        captions = None
        tiers = {k: tiers[k].astype(np.float16) for k in INDEX_TIERS}
    return ChunkResult(first, rows, tiers, captions, warnings)
