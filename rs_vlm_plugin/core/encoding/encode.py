"""Reading and encoding tiles: the image tower over the tiles of an extent, batch by batch.

    extent -> plan (:func:`.tiles.make_plan`) -> tiles (:func:`.tiles.tiles_to_encode`, masked)
      -> reads on a background thread -> ``ModelBundle.encode_tiers`` per batch -> :class:`.tiles.Encoding`
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from ..bundle import TIER_OUTPUTS, ModelBundle
from ..errors import RsVlmError
from ..geometry import Extent
from ..planning.dris import PlanConfig
from ..prefetch import prefetched
from ..progress import NullProgress, ProgressBackend, SubProgress, check_canceled
from ..raster import RasterSource
from .tiles import BatchHook, EncodedTile, Encoding, make_plan, mask_tiles, no_valid_pixels, tiles_to_encode


class EncodeSettings(Protocol):
    """What encoding reads of a job's settings (a :class:`~rs_vlm_plugin.core.jobs.config.JobConfig`
    is one): encoding never needs to know which job asked."""

    plan: PlanConfig
    batch_size: int
    mask_wkb: bytes | None


def encode_extent(source: RasterSource, bundle: ModelBundle, extent: Extent | None, config: EncodeSettings,
                  progress: ProgressBackend, keep: tuple[str, ...] | None = None,
                  on_batch: BatchHook | None = None) -> Encoding:
    """Plan, read and encode every tile of an extent.

    Args:
        keep: Names of the tiers to compute and keep (for example ``("embedding", "regions")``
            for an index, which does not need the 196 object tokens of every tile: the model
            then skips its object tier); None keeps all.
        on_batch: Called with each batch's tiles and tiers as they are encoded; what it returns
            is kept instead of the batch's tiers (see :class:`caption_stream.CaptionStream`).
    """
    timings = {}
    start = time.perf_counter()
    extent = source.georef.clip(extent or source.georef.extent)
    progress.set_stage("Reading an overview and planning tiles")
    plan = make_plan(source, extent, config.plan, bundle.image_size, timings)
    check_canceled(progress)
    timings["plan_s"] = time.perf_counter() - start  # the overview read included
    tiles = mask_tiles(tiles_to_encode(plan, source.georef.metres_per_unit, bundle.image_size), config.mask_wkb)
    progress.set_fraction(0.05)
    progress.set_stage(f"Encoding {len(tiles)} tiles")
    encoded, tiers, read_s, encode_s = encode_tiles(source, bundle, tiles, config.batch_size, progress,
                                                    SubProgress(progress, 0.05, 0.95), keep, on_batch)
    check_canceled(progress)  # a cancel during the last batch stops here, before scoring or captions
    if all("global" in t.levels for t in encoded):
        raise no_valid_pixels(source)
    if len(encoded) < len(tiles):
        progress.info(f"{len(tiles) - len(encoded)} of {len(tiles)} tiles have no valid pixels (nodata); they were "
                      "skipped.")
    timings.update(read_s=read_s, encode_s=encode_s, tiles=len(encoded))
    return Encoding(plan, encoded, tiers["embedding"], timings, tiers, source, config.batch_size)


def encode_tiles(source: RasterSource, bundle: ModelBundle, tiles: list[EncodedTile], batch_size: int,
                 progress: ProgressBackend, sub: ProgressBackend | None = None,
                 keep: tuple[str, ...] | None = None, on_batch: BatchHook | None = None,
                 ) -> tuple[list[EncodedTile], dict[str, np.ndarray], float, float]:
    """Read and encode tiles in batches (cancellation checked between batches).

    A tile without one valid pixel shows nothing: it is neither encoded nor returned (the
    global view always is).

    Args:
        tiles: What to read (each tile's :attr:`EncodedTile.read_extent`, at the model's input size).
        sub: Receives the fraction of tiles done (None: nothing).
        keep: Names of the tiers to compute and keep; None keeps all.
        on_batch: See :func:`encode_extent`.

    Returns:
        The tiles encoded, their tiers (rows in the same order), and the seconds spent reading
        and encoding.
    """
    parts: list[dict[str, np.ndarray]] = []
    encoded: list[EncodedTile] = []
    clock = {"read_s": 0.0, "encode_s": 0.0}
    batches = encoded_batches(source, bundle, tiles, batch_size, progress, sub, keep, clock)
    try:
        for chosen, tiers in batches:
            parts.append(on_batch(chosen, tiers) if on_batch is not None else tiers)
            encoded += chosen
    finally:
        batches.close()  # stops the reader thread now, not when a traceback lets go of this frame
    if parts:
        tiers = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        tiers = bundle.encode_tiers([], tiers=keep)
        tiers = on_batch([], tiers) if on_batch is not None else tiers
    return encoded, tiers, clock["read_s"], clock["encode_s"]


READ_AHEAD = 2
"""Batches of tiles read ahead of the encoder, on a background thread (0: none)."""


def encoded_batches(source: RasterSource, bundle: ModelBundle, tiles: list[EncodedTile], batch_size: int,
                    progress: ProgressBackend, sub: ProgressBackend | None = None,
                    keep: tuple[str, ...] | None = None, clock: dict[str, float] | None = None,
                    ) -> Iterator[tuple[list[EncodedTile], dict[str, np.ndarray]]]:
    """Batch by batch, the tiles with valid pixels and their tiers (what :func:`encode_tiles`
    gathers), so that a caller can turn each batch into records and let its tokens go.

    The next batches are read on a background thread (:data:`READ_AHEAD`) while this one is
    encoded; the tiers left out of ``keep`` are not computed where the model can skip them.

    Args:
        clock: Receives the seconds spent reading ("read_s", on the reader thread) and encoding
            ("encode_s").
    """
    size = bundle.image_size
    clock = clock if clock is not None else {}
    clock.setdefault("read_s", 0.0)
    clock.setdefault("encode_s", 0.0)

    def read(first: int) -> tuple[int, list[EncodedTile], list[np.ndarray]]:
        t0 = time.perf_counter()
        batch = tiles[first:first + batch_size]
        reads = [source.read_masked(t.read_extent, size, size) for t in batch]
        chosen = [(t, rgb) for t, (rgb, valid) in zip(batch, reads) if valid.any() or "global" in t.levels]
        clock["read_s"] += time.perf_counter() - t0
        return first, [t for t, _ in chosen], [rgb for _, rgb in chosen]

    reads = prefetched(read, range(0, len(tiles), batch_size), READ_AHEAD)
    try:
        for first, chosen, pixels in reads:
            check_canceled(progress)
            if chosen:
                t0 = time.perf_counter()
                tiers = bundle.encode_tiers(np.stack(pixels), batch_size=len(chosen), tiers=keep)
                clock["encode_s"] += time.perf_counter() - t0
                yield chosen, tiers
            if sub is not None:
                sub.set_fraction((first + batch_size) / len(tiles))
    finally:
        # The reader thread must be stopped (joined) before the job unwinds: a cancel, an error or
        # Ctrl-C must not leave it reading the raster while the file is closed or Python exits.
        reads.close()


def tile_tiers(encoding: Encoding, bundle: ModelBundle, rows: list[int]) -> dict[str, np.ndarray]:
    """Every tier of some tiles: taken from the encoding where it kept them, else those tiles
    read and encoded again (a search keeps no object tokens, and needs them for its few hits only).

    Raises:
        ValueError: The encoding lacks tiers and does not know its source.
    """
    if all(k in encoding.tiers for k in TIER_OUTPUTS):
        return {k: v[rows] for k, v in encoding.tiers.items()}
    if encoding.source is None:
        raise ValueError("The encoding kept only some tiers and does not know where its tiles were read.")
    tiles = [encoding.tiles[i] for i in rows]
    again, tiers, _, _ = encode_tiles(encoding.source, bundle, tiles, encoding.batch_size, NullProgress())
    if [t.key for t in again] != [t.key for t in tiles]:  # the tiles had valid pixels the first time
        raise RsVlmError(f"The raster {encoding.source.name} changed while it was being read; run the job again.")
    return tiers
