"""Text-guided DRIS: read and encode coarse first, then refine where the query scores, down to native resolution.

    native-grid roots (two halvings above native) -> encode -> each child quadrant's estimate
    (the query's relevance map of the parent's object tokens over the quadrant when the query
    names an object class the object tier knows, else the parent's region token of the quadrant)
    -> encode the best quadrants only -> their quadrants ... until the budget of encoded tiles is
    spent or every chosen tile is read at the raster's native resolution.

The budget counts every tile encoded, the coarse ones too, so it is a hard bound on the work.
A coarser round may spend ``(1 - final_share) / levels_left`` of what remains, so the native
level keeps its share. Only the quadrants worth a closer look are encoded: a split that made all
four children spent most of the budget on empty ground (for dense classes even a perfect guide
overran it). The rest of a split tile stays covered by the tile itself, and its object tokens
outline what it shows there (:attr:`GuidedEncoding.outline_parts`).

On the held-back VHR-10 mosaics (``build.py bench-locate``) the 2x-coarser parent's relevance
map chose native cells almost as well as the cells' own maps (10 % of the cells held 82 % of
the objects, against 82 % for their own maps); the region tokens of the quadrants held 68 %.
This is the coarse-to-fine, text-guided selection of LRS-VQA (Luo et al. 2025) in the
project's terms: their tokens are this planner's tiles.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..planning.dris import QuadTree, native_grid_count
from ..geometry import Extent
from ..encoding.encode import encode_tiles
from ..encoding.tiles import EncodedTile, Encoding, mask_tiles, no_valid_pixels
from ..progress import ProgressBackend, SubProgress, check_canceled
from ..qa import QueryScorer, presence_scores
from ..raster import RasterSource
from ..validation import check_pixel_size
from .relevance import relevance_maps
from .sizes import class_size


SCORE_TIERS = ("embedding", "regions")
"""What a tile is scored by (its query score, for hits and the plan layer)."""


@dataclass
class GuidedEncoding(Encoding):
    """An encoding made by the guided planner.

    Attributes:
        objects: Object tokens (G*G, D) by row of ``tiles``, for the tiles at most
            ``GuideConfig.outline_levels`` halvings above native resolution.
        outline_parts: (row, footprint) pairs that outline the query: each native tile over its
            own footprint, and each coarser tile with object tokens over the parts of it that no
            encoded child covers (the finest encoded view of every part of the extent).
    """

    objects: dict[int, np.ndarray] = field(default_factory=dict)
    outline_parts: list[tuple[int, Extent]] = field(default_factory=list)


@dataclass(frozen=True)
class GuideConfig:
    """Settings of the text-guided planner.

    Attributes:
        prior_weight: Weight of a quadrant's content complexity against its estimate (scaled to
            [0, 1] over the candidates) when choosing what to encode: a tie-break (at 0.1 the
            share of the mosaics' objects in the native cells fell from 75 % to 44 %).
        min_complexity: Quadrants less complex than this (flat water, nodata) are never encoded.
        coarse_size: Long side in pixels of the overview the complexity prior comes from (at
            most the plan's own).
        root_levels: The roots are read this many halvings above native resolution (a 4x
            coarser view: the 2x view under it then chooses the native cells) ...
        root_share: ... unless they would be more than this share of the budget; then coarser.
        final_share: Share of the remaining budget each coarser round leaves to the native
            level (0.35 gave the best recall on the VHR-10 mosaics among 0.15-0.65).
        outline_levels: Tiles up to this many halvings above native keep their object tokens
            and outline the parts their encoded children do not cover.
    """

    prior_weight: float = 0.02
    min_complexity: float = 0.02
    coarse_size: int = 384
    root_levels: int = 2
    root_share: float = 1 / 3
    final_share: float = 0.35
    outline_levels: int = 2


def guided_encoding(source: RasterSource, bundle, extent: Extent | None, config, scorer: QueryScorer,
                    progress: ProgressBackend, guide: GuideConfig | None = None, every_tier: bool = False,
                    text: str | None = None):
    """Plan and encode an extent coarse to fine, refining where ``scorer`` finds the query.

    Args:
        source: The raster.
        bundle: The model.
        extent: The area (None: the whole raster).
        config: The job's settings (a :class:`~rs_vlm_plugin.core.jobs.config.JobConfig`): its plan's
            budget, batch size, mask and ``outlines``; the plan is made on the native grid.
        scorer: Scores (..., D) embeddings for the query (as for search ranking).
        progress: Stages, progress and cancellation.
        guide: The planner's settings.
        every_tier: Keep every tier of every tile and add the global view of the whole extent
            first (Describe guided by a text captions every tile); False keeps what scores the
            tiles, plus, with ``config.outlines``, the object tokens of the tiles near native
            resolution.
        text: The query's words: when they name one of the object classes the object tier knows
            (:func:`.sizes.class_size`), a quadrant's estimate is the best relevance of the parent's
            object tokens over it (:mod:`.relevance`, calibrated against background); otherwise,
            or None: ``scorer`` on the parent's region token of that quadrant.

    Returns:
        A :class:`GuidedEncoding` of every tile encoded (coarse ones included; tiles without
        children have the level "object", split ones "region"), whose plan's nodes carry why
        each was chosen and whose ``plan.scores`` hold the query scores.

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
    plan_config = dataclasses.replace(plan_config, native_roots=guided_root_count(
        extent, g.native_gsd, plan_config.tile_size, plan_config.leaf_budget, guide, plan_config.max_depth))
    progress.set_stage("Reading an overview")
    check_pixel_size(extent.width / g.pixel_width, extent.height / g.pixel_height, source.name)
    width, height = plan_config.coarse_shape(extent)
    t0 = time.perf_counter()
    coarse, valid = source.read_masked(extent, max(8, width), max(8, height))
    overview_s = time.perf_counter() - t0
    if not valid.any():
        raise no_valid_pixels(source)
    tree = QuadTree(extent, g.native_gsd, coarse, plan_config)
    budget = plan_config.leaf_budget
    # The object tier knows the ten VHR-10 classes: it guides a query that names one; the region
    # tokens guide the others (on the demo scene, "a paved road" by object relevance chose quadrants
    # off the road, by region tokens along it).
    object_guide = bool(text) and class_size(bundle, text) is not None
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
        # The object tier only where its tokens choose the quadrants to encode next (a query the
        # object tier knows) or outline the query (tiles near native resolution, when outlines are made).
        levels = [levels_to_native(tree.nodes[t.key].gsd, g.native_gsd) for t in frontier]
        outline = config.outlines and min(levels) <= guide.outline_levels
        with_objects = every_tier or outline or (object_guide and max(levels) > 0)
        encoded, tiers, r_s, e_s = encode_tiles(source, bundle, frontier, config.batch_size, progress, None,
                                                None if with_objects else SCORE_TIERS)
        read_s, encode_s = read_s + r_s, encode_s + e_s
        check_canceled(progress)
        t0 = time.perf_counter()
        estimates: dict[tuple[str, int], float] = {}
        if encoded:
            values = presence_scores(tiers["embedding"], tiers["regions"], scorer)
            scores.update((t.key, float(v)) for t, v in zip(encoded, values))
            maps = relevance_maps(tiers["objects"], bundle, text) if object_guide and "objects" in tiers else None
            for k, tile in enumerate(encoded):
                node = tree.nodes[tile.key]
                if outline and levels_to_native(node.gsd, g.native_gsd) <= guide.outline_levels:
                    objects[len(tiles) + k] = tiers["objects"][k]
                if tree.can_split(node):
                    estimates.update(((tile.key, q), value) for q, value in
                                     quadrant_estimates(tree, node, tile.read_extent, tiers["regions"][k], scorer,
                                                        None if maps is None else maps[k]).items())
            tiles += encoded
            parts.append(tiers if every_tier else {k: tiers[k] for k in SCORE_TIERS})
        sub.set_fraction(len(tiles) / max(1, budget))
        frontier = as_tiles(_next_round(tree, estimates, budget - len(tiles), g.native_gsd, guide))
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
    timings = {"plan_s": plan_s, "overview_s": overview_s, "read_s": read_s, "encode_s": encode_s,
               "tiles": len(tiles), "rounds": rounds}
    return GuidedEncoding(plan, tiles, tiers["embedding"], timings, tiers, source, config.batch_size, objects,
                          outline_parts(tree, tiles, objects))


def guided_root_count(extent: Extent, native_gsd: float, tile_size: int, budget: int, guide: GuideConfig,
                      max_depth: int) -> int:
    """How many native-grid roots the guided plan starts from: those ``guide.root_levels`` halvings
    above native, or coarser until they are at most ``guide.root_share`` of the budget."""
    depth = min(guide.root_levels, max_depth)
    while native_grid_count(extent, native_gsd, tile_size, depth) > max(1.0, budget * guide.root_share) \
            and depth < max_depth:
        depth += 1
    return native_grid_count(extent, native_gsd, tile_size, depth)


def quadrant_estimates(tree: QuadTree, node, window: Extent, regions: np.ndarray, scorer: QueryScorer,
                       relevance_map: np.ndarray | None) -> dict[int, float]:
    """How likely each child quadrant of an encoded tile holds the query, before it is read.

    With the tile's relevance map (G, G) over ``window`` (the square read): the best cell over
    the quadrant's footprint. Without it: the scorer on the tile's region token of the 2x2 grid
    under the quadrant's centre (the window may be moved inside the raster at its edges).
    """
    out = {}
    for q, _, footprint in tree.child_cells(node):
        if relevance_map is not None:
            out[q] = float(_block(relevance_map, window, footprint).max())
        else:
            cx, cy = footprint.center
            col = min(1, max(0, int(2 * (cx - window.xmin) / window.width)))
            row = min(1, max(0, int(2 * (window.ymax - cy) / window.height)))
            out[q] = float(scorer(regions[None, 2 * row + col])[0])
    return out


def _block(values: np.ndarray, window: Extent, footprint: Extent) -> np.ndarray:
    """The cells of a (G, G) map over ``window`` that ``footprint`` touches (at least one)."""
    rows, cols = values.shape
    c0 = math.floor((footprint.xmin - window.xmin) / window.width * cols + 1e-6)
    c1 = math.ceil((footprint.xmax - window.xmin) / window.width * cols - 1e-6)
    r0 = math.floor((window.ymax - footprint.ymax) / window.height * rows + 1e-6)
    r1 = math.ceil((window.ymax - footprint.ymin) / window.height * rows - 1e-6)
    c0, r0 = min(max(c0, 0), cols - 1), min(max(r0, 0), rows - 1)
    return values[r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)]


def _next_round(tree: QuadTree, estimates: dict[tuple[str, int], float], remaining: int, native_gsd: float,
                guide: GuideConfig) -> list:
    """Encode the quadrants this round may afford, best first; returns the new children (to encode).

    ``estimates`` maps (tile key, quadrant) of the tiles encoded last round to how likely the
    quadrant holds the query. A quadrant's priority is its estimate scaled to [0, 1] over the
    candidates plus ``prior_weight`` times its complexity; its reason is ``"query"`` when the
    estimate's part is the larger, ``"complexity"`` otherwise.
    """
    if remaining < 1:
        return []
    candidates = []
    for key in dict.fromkeys(key for key, _ in estimates):  # each tile once, in the estimates' order
        node = tree.nodes[key]
        if not tree.can_split(node):
            continue
        for q, _, footprint in tree.child_cells(node):
            complexity = tree.footprint_complexity(footprint)
            if (key, q) in estimates and complexity >= guide.min_complexity:
                candidates.append((key, q, estimates[(key, q)], complexity))
    if not candidates:
        return []
    levels_left = min(levels_to_native(tree.nodes[key].gsd / 2, native_gsd) for key, *_ in candidates)
    quota = remaining if levels_left == 0 else max(1, math.floor(remaining * (1 - guide.final_share) / levels_left))
    values = np.asarray([c[2] for c in candidates], np.float64)
    low, span = float(values.min()), float(values.max() - values.min())
    ranked = []
    for key, q, value, complexity in candidates:
        query_part = (value - low) / span if span > 0 else 1.0
        prior_part = guide.prior_weight * complexity
        ranked.append((-(query_part + prior_part), tree.nodes[key].order, q, key,
                       "query" if query_part >= prior_part else "complexity"))
    ranked.sort()
    chosen: dict[str, dict[int, str]] = {}
    for _, _, q, key, reason in ranked[:quota]:
        chosen.setdefault(key, {})[q] = reason
    children = []
    for key in sorted(chosen, key=lambda k: tree.nodes[k].order):
        quadrants = chosen[key]
        best = "query" if "query" in quadrants.values() else "complexity"
        children += tree.split(tree.nodes[key], best, quadrants)
    return children


def levels_to_native(gsd: float, native_gsd: float) -> int:
    """Halvings left before a tile of ``gsd`` is read at native resolution."""
    return max(0, int(math.floor(math.log2(gsd / native_gsd) + 1e-9)))


def outline_parts(tree: QuadTree, tiles: list[EncodedTile], objects: dict[int, np.ndarray]) -> list[tuple[int, Extent]]:
    """(row, footprint) of the finest encoded view over every part the object tokens cover: a tile
    without children over its footprint, a split one over its quadrants that were not encoded."""
    out = []
    for row in sorted(objects):
        node = tree.nodes[tiles[row].key]
        if node.children is None:
            out.append((row, node.extent))
            continue
        made = {int(c.key.rsplit(".", 1)[1]) for c in node.children}
        out += [(row, footprint) for q, _, footprint in tree.child_cells(node) if q not in made]
    return out


def _inside_mask(tiles: list, mask_wkb: bytes, first: bool = False) -> list:
    """The tiles that touch the mask (the sentence-errors of ``mask_tiles`` for the first level)."""
    if first:
        return mask_tiles(tiles, mask_wkb)
    from shapely import wkb
    from shapely.prepared import prep

    prepared = prep(wkb.loads(mask_wkb))
    return [t for t in tiles if prepared.intersects(t.extent.to_polygon())]
