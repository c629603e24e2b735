"""The tiles of an extent and the types of their encoding.

    DRIS plan (:mod:`..planning.dris`) -> the tiles to encode (the global view, the regions, the
      leaves, each once) -> those that touch the mask -> :class:`EncodedTile` rows of an :class:`Encoding`
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import RsVlmError
from ..geometry import Extent
from ..planning.dris import PlanConfig, TilePlan, plan_tiles
from ..raster import RasterSource
from ..validation import check_pixel_size


@dataclass
class EncodedTile:
    """A tile that went through the image tower, with the caption levels it stands for."""

    key: str
    extent: Extent
    depth: int
    gsd_m: float
    complexity: float
    levels: tuple[str, ...]
    window: Extent | None = None  # the square read, where it differs from the footprint (native grid edges)

    @property
    def read_extent(self) -> Extent:
        """What is read for the model: the square window, else the footprint."""
        return self.window or self.extent


@dataclass
class Encoding:
    """Tiles and their tokens for one extent.

    Attributes:
        embeddings: (N, D) the global token of each tile (its embedding for search and ranking).
        tiers: All outputs of :meth:`ModelBundle.encode_tiers` (regions, objects, routing too).
    """

    plan: TilePlan
    tiles: list[EncodedTile]
    embeddings: np.ndarray
    timings: dict[str, float]
    tiers: dict[str, np.ndarray] = field(default_factory=dict)
    source: RasterSource | None = None  # where the tiles were read, for tiers computed later (:func:`tile_tiers`)
    batch_size: int = 16

    def routing(self) -> dict[str, list[float]]:
        """Mean expert weights of the global, region and object tokens over all tiles (how the
        semantic experts specialise)."""
        routing = self.tiers.get("routing")
        if routing is None or not len(routing):
            return {}
        return {tier: [round(float(v), 3) for v in routing[:, k].mean(0)]
                for k, tier in enumerate(("global token", "region tokens", "object tokens"))}


BatchHook = Callable[[list[EncodedTile], dict[str, np.ndarray]], dict[str, np.ndarray]]
"""``(tiles, tiers) -> tiers to keep``: what :func:`encode_extent` calls with each batch."""


def make_plan(source: RasterSource, extent: Extent, config: PlanConfig, tile_size: int,
              timings: dict | None = None) -> TilePlan:
    """Read the extent coarsely and plan the tiles with DRIS (or the uniform grid).

    Args:
        timings: Receives ``overview_s``, the seconds of the overview read (on a raster without
            overviews, the first pass over every pixel: the tile reads after it hit GDAL's cache).

    Raises:
        RsVlmError: The extent is under a few pixels on a side, or has no valid pixels.
    """
    config = dataclasses.replace(config, tile_size=tile_size)
    g = source.georef
    check_pixel_size(extent.width / g.pixel_width, extent.height / g.pixel_height, source.name)
    width, height = config.coarse_shape(extent)
    start = time.perf_counter()
    coarse, valid = source.read_masked(extent, max(8, width), max(8, height))
    if timings is not None:
        timings["overview_s"] = time.perf_counter() - start
    if not valid.any():
        raise no_valid_pixels(source)
    return plan_tiles(extent, g.native_gsd, coarse, config)


def no_valid_pixels(source: RasterSource) -> RsVlmError:
    """The sentence for an area whose pixels are all nodata (or NaN)."""
    return RsVlmError(f"The area of {source.name} to process has no valid pixels (all of them are nodata or NaN); "
                      "choose an extent that shows some of the image, or check the raster's nodata value.")


def tiles_to_encode(plan: TilePlan, metres_per_unit: float, tile_size: int) -> list[EncodedTile]:
    """The global view, the regions (quadrants of each root) and the DRIS leaves, each once.

    A region that is also a leaf is encoded once and captioned at both levels.
    """
    by_key: dict[str, EncodedTile] = {}
    nodes = {t.key: t for t in plan.nodes}

    def add(key: str, extent: Extent, depth: int, complexity: float, level: str, window: Extent | None = None) -> None:
        if key in by_key:
            by_key[key].levels += (level,)
            return
        side = window or extent
        gsd = max(side.width, side.height) / tile_size * metres_per_unit
        by_key[key] = EncodedTile(key, extent, depth, gsd, complexity, (level,), window if window != extent else None)

    roots = plan.roots
    whole = plan.extent
    if len(roots) == 1 and roots[0].read_extent == roots[0].extent:
        add(roots[0].key, roots[0].extent, 0, roots[0].complexity, "global")
    else:
        add("global", whole, 0, float(np.mean([r.complexity for r in roots])), "global")
    for root in roots:
        for index, window in enumerate(root.read_extent.quadrants()):
            key = f"{root.key}.{index}"
            quadrant = window if root.read_extent == root.extent else window.intersection(whole)
            if quadrant is None:  # a native-grid root's quadrant outside the extent
                continue
            complexity = nodes[key].complexity if key in nodes else root.complexity
            add(key, quadrant, 1, complexity, "region", window)
    for leaf in plan.leaves:
        add(leaf.key, leaf.extent, leaf.depth, leaf.complexity, "object", leaf.read_extent)
    return list(by_key.values())


def mask_tiles(tiles: list[EncodedTile], mask_wkb: bytes | None) -> list[EncodedTile]:
    """The tiles that touch the mask (all of them without one); the global view always stays.

    Raises:
        RsVlmError: The mask is not a readable geometry, or no tile touches it.
    """
    if mask_wkb is None:
        return tiles
    from shapely import wkb
    from shapely.prepared import prep

    try:
        mask = wkb.loads(mask_wkb)
    except Exception as exc:  # noqa: BLE001 - shapely raises several kinds
        raise RsVlmError(f"The mask geometry cannot be read ({exc}); select valid polygons.") from exc
    if mask.is_empty or mask.area <= 0:
        raise RsVlmError("The mask has no area; select one or more polygons (not points or lines).")
    prepared = prep(mask)
    kept = [t for t in tiles if "global" in t.levels or prepared.intersects(t.extent.to_polygon())]
    if all("global" in t.levels for t in kept):
        raise RsVlmError("The selected polygons do not overlap the raster; select polygons over the raster.")
    return kept
