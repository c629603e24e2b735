"""Text-guided DRIS: read and encode coarse first, then refine where the query scores, down to native resolution.

    native-grid roots (few, coarse) -> encode -> each tile's query score (best of its global and
    13 region tokens) -> split the best leaves (query score with the complexity prior,
    ``dris.refinement_order``) -> encode their children -> ... until the budget of encoded tiles
    is spent or every leaf worth splitting is at the raster's native resolution.

The budget counts every tile encoded, the coarse ones too, so it is a hard bound on the work.
It is spread over the levels still to go: a round may spend ``remaining / levels_left`` tiles,
so the last level (native resolution) gets its share instead of the first level taking all.
This is the coarse-to-fine, text-guided selection of LRS-VQA (Luo et al. 2025) in the
project's terms: their tokens are this planner's tiles.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..dris import QuadTree, refinement_order
from ..geometry import Extent
from ..pipeline import EncodedTile, Encoding, encode_tiles, mask_tiles, no_valid_pixels
from ..progress import ProgressBackend, SubProgress, check_canceled
from ..qa import QueryScorer, presence_scores
from ..raster import RasterSource
from ..validation import check_pixel_size


SCORE_TIERS = ("embedding", "regions")
"""What a tile is scored by while it may still be split."""


@dataclass
class GuidedEncoding(Encoding):
    """An encoding made by the guided planner.

    Attributes:
        objects: Object tokens (G*G, D) of the tiles read at native resolution, by row of
            ``tiles`` (the other tiles kept only what scores them).
    """

    objects: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class GuideConfig:
    """Settings of the text-guided planner.

    Attributes:
        prior_weight: Weight of a cell's content complexity against its query score (scaled to
            [0, 1] over the candidates) when choosing what to split.
        min_complexity: Leaves less complex than this (flat water, nodata) are never split.
        coarse_size: Long side in pixels of the overview the complexity prior comes from (at
            most the plan's own): the prior only breaks near-ties of the query scores, and a
            384 px overview of a 4,600 px scene is read and mapped in 0.14 s against 0.75 s at
            768 px (planning was 10 % of a guided job).
    """

    prior_weight: float = 0.25
    min_complexity: float = 0.02
    coarse_size: int = 384


def guided_encoding(source: RasterSource, bundle, extent: Extent | None, config, scorer: QueryScorer,
                    progress: ProgressBackend, guide: GuideConfig | None = None, every_tier: bool = False):
    """Plan and encode an extent coarse to fine, refining where ``scorer`` finds the query.

    Args:
        source: The raster.
        bundle: The model.
        extent: The area (None: the whole raster).
        config: The job's :class:`~rs_vlm_plugin.core.pipeline.JobConfig` (its plan's budget,
            batch size and mask; the plan is made on the native grid).
        scorer: Scores (..., D) embeddings for the query (as for search ranking).
        progress: Stages, progress and cancellation.
        guide: The planner's settings.
        every_tier: Keep every tier of every tile and add the global view of the whole extent
            first (Describe guided by a text captions every tile); False keeps only what scores
            the tiles, and the object tokens of the native ones.

    Returns:
        A :class:`GuidedEncoding` of every tile encoded (coarse ones included; leaves have the
        level "object", split tiles "region"; tiers "embedding" and "regions", object tokens of
        the native-resolution tiles apart), whose plan's nodes carry why each was split and whose
        ``plan.scores`` hold the query scores.

    Raises:
        RsVlmError: The area is too small or has no valid pixels, or the mask misses it.
        CancelledError: The user cancelled.
    """
    guide = guide or GuideConfig()
    start = time.perf_counter()
    extent = source.georef.clip(extent or source.georef.extent)
    g = source.georef
    plan_config = dataclasses.replace(config.plan, tile_size=bundle.image_size, native=True, uniform=False,
                                      coarse_size=min(config.plan.coarse_size, guide.coarse_size))
    progress.set_stage("Reading an overview")
    check_pixel_size(extent.width / g.pixel_width, extent.height / g.pixel_height, source.name)
    width, height = plan_config.coarse_shape(extent)
    coarse, valid = source.read_masked(extent, max(8, width), max(8, height))
    if not valid.any():
        raise no_valid_pixels(source)
    tree = QuadTree(extent, g.native_gsd, coarse, plan_config)
    budget = plan_config.leaf_budget
    mpu = g.metres_per_unit
    plan_s = time.perf_counter() - start

    def as_tiles(nodes) -> list[EncodedTile]:
        return [EncodedTile(n.key, n.extent, n.depth, n.gsd * mpu, n.complexity, ("object",),
                            n.window if n.window != n.extent else None) for n in nodes]

    tiles: list[EncodedTile] = []
    parts: list[dict[str, np.ndarray]] = []
    objects: dict[int, np.ndarray] = {}
    scores: dict[str, float] = {}
    read_s = encode_s = 0.0
    rounds = 0
    frontier = as_tiles(tree.roots)
    if config.mask_wkb is not None:
        frontier = _inside_mask(frontier, config.mask_wkb, first=True)
    if every_tier:
        whole = EncodedTile("global", extent, 0, max(extent.width, extent.height) / bundle.image_size * mpu,
                            float(np.mean([n.complexity for n in tree.roots])), ("global",))
        encoded, tiers, r_s, e_s = encode_tiles(source, bundle, [whole], config.batch_size, progress)
        read_s, encode_s = r_s, e_s
        tiles += encoded
        parts.append(tiers)
    progress.set_fraction(0.05)
    sub = SubProgress(progress, 0.05, 0.95)
    while frontier:
        rounds += 1
        progress.set_stage(f"Encoding {len(frontier)} tiles (level {rounds}, {len(tiles)} of at most {budget} so far)")
        # Tiles that may still be split need only what scores them; the finest ones (read at
        # native resolution) also give their object tokens, for the outlines.
        final = [t for t in frontier if not tree.can_split(tree.nodes[t.key])]
        rest = [t for t in frontier if tree.can_split(tree.nodes[t.key])]
        for group, keep in ((rest, None if every_tier else SCORE_TIERS), (final, None)):
            if not group:
                continue
            encoded, tiers, r_s, e_s = encode_tiles(source, bundle, group, config.batch_size, progress, None, keep)
            read_s, encode_s = read_s + r_s, encode_s + e_s
            check_canceled(progress)
            if not encoded:
                continue
            if group is final:
                objects.update((len(tiles) + k, tiers["objects"][k]) for k in range(len(encoded)))
            tiles += encoded
            parts.append(tiers if every_tier else {k: tiers[k] for k in SCORE_TIERS})
            values = presence_scores(tiers["embedding"], tiers["regions"], scorer)
            scores.update((t.key, float(v)) for t, v in zip(encoded, values))
        sub.set_fraction(len(tiles) / max(1, budget))
        t0 = time.perf_counter()
        frontier = as_tiles(_next_round(tree, scores, budget - len(tiles), g.native_gsd, guide))
        if config.mask_wkb is not None:
            frontier = _inside_mask(frontier, config.mask_wkb)
        plan_s += time.perf_counter() - t0
    if all("global" in t.levels for t in tiles):
        raise no_valid_pixels(source)
    plan = dataclasses.replace(tree.plan(), scores=scores)
    leaves = {t.key for t in plan.leaves}
    for tile in tiles:
        if tile.levels != ("global",):
            tile.levels = ("object",) if tile.key in leaves else ("region",)
    tiers = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    timings = {"plan_s": plan_s, "read_s": read_s, "encode_s": encode_s, "tiles": len(tiles), "rounds": rounds}
    return GuidedEncoding(plan, tiles, tiers["embedding"], timings, tiers, source, config.batch_size, objects)


def _next_round(tree: QuadTree, scores: dict[str, float], remaining: int, native_gsd: float,
                guide: GuideConfig) -> list:
    """Split the leaves this round may afford, best first; returns the new children (to encode)."""
    candidates = [n for n in tree.leaves() if tree.can_split(n) and n.key in scores]
    if not candidates or remaining < 1:
        return []
    levels_left = min(_levels_to_native(n.gsd, native_gsd) for n in candidates)
    quota = min(remaining, max(1, math.ceil(remaining / max(1, levels_left))))
    children, spent = [], 0
    for key, reason, _ in refinement_order(candidates, scores, guide.prior_weight, guide.min_complexity):
        node = tree.nodes[key]
        cost = len(tree.child_cells(node))
        if spent + cost > quota:
            if spent + cost > remaining or spent > 0:
                continue
        children += tree.split(node, reason)
        spent += cost
        if spent >= quota:
            break
    return children


def _levels_to_native(gsd: float, native_gsd: float) -> int:
    """Halvings left before a tile of ``gsd`` is read at native resolution."""
    return max(0, int(math.floor(math.log2(gsd / native_gsd) + 1e-9)))


def _inside_mask(tiles: list, mask_wkb: bytes, first: bool = False) -> list:
    """The tiles that touch the mask (the sentence-errors of ``mask_tiles`` for the first level)."""
    if first:
        return mask_tiles(tiles, mask_wkb)
    from shapely import wkb
    from shapely.prepared import prep

    prepared = prep(wkb.loads(mask_wkb))
    return [t for t in tiles if prepared.intersects(t.extent.to_polygon())]
