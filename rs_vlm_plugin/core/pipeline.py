"""The main jobs: describe an extent at three levels, and search it by text.

    plan (DRIS) -> read tiles -> encode (ONNX) -> rank concepts / score the query -> records
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from .bundle import ModelBundle
from .captions import compose_caption
from .dris import PlanConfig, TilePlan, plan_tiles
from .errors import RsVlmError
from .geometry import Extent
from .knowledge import LEVEL_OF_CAPTION
from .progress import NullProgress, ProgressBackend, SubProgress, check_canceled
from .raster import RasterSource
from .records import CaptionRecord, SearchHit

CAPTION_LAYERS = {"global": "captions_global", "region": "captions_region", "object": "captions_object"}
SEARCH_LAYER = "search_hits"


@dataclass(frozen=True)
class JobConfig:
    """Settings of a describe or search job.

    Attributes:
        plan: The DRIS planner's settings (tile size is replaced by the model's input size).
        batch_size: Tiles per ONNX batch; cancellation is checked between batches.
        top_concepts: Concepts kept per tile and level.
        max_hits: Search hits kept (best first).
        min_score: Search hits below this cosine similarity are dropped (None keeps all).
    """

    plan: PlanConfig = field(default_factory=PlanConfig)
    batch_size: int = 16
    top_concepts: int = 3
    max_hits: int = 10
    min_score: float | None = None


@dataclass
class EncodedTile:
    """A tile that went through the image tower, with the caption levels it stands for."""

    key: str
    extent: Extent
    depth: int
    gsd_m: float
    complexity: float
    levels: tuple[str, ...]


@dataclass
class Encoding:
    """Tiles and their embeddings for one extent."""

    plan: TilePlan
    tiles: list[EncodedTile]
    embeddings: np.ndarray
    timings: dict[str, float]


@dataclass
class DescribeResult:
    """Captions at three levels for one extent."""

    records: list[CaptionRecord]
    plan: TilePlan
    crs_wkt: str | None
    warnings: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def by_level(self) -> dict[str, list[CaptionRecord]]:
        """Records grouped by level, in the order global, region, object."""
        return {level: [r for r in self.records if r.level == level] for level in CAPTION_LAYERS}

    @property
    def global_caption(self) -> str:
        """The caption of the whole extent."""
        return next((r.caption for r in self.records if r.level == "global"), "")


@dataclass
class SearchResult:
    """Tiles ranked by similarity to a text query."""

    query: str
    hits: list[SearchHit]
    records: list[CaptionRecord]
    plan: TilePlan
    crs_wkt: str | None
    warnings: list[str]
    timings: dict[str, float] = field(default_factory=dict)


def result_layers(result: DescribeResult | SearchResult) -> dict[str, list]:
    """Records per output layer name, ready for :func:`gpkg.write_geopackage`."""
    if isinstance(result, SearchResult):
        return {SEARCH_LAYER: result.hits}
    grouped = result.by_level()
    return {CAPTION_LAYERS[level]: grouped[level] for level in CAPTION_LAYERS}


def result_kinds(result: DescribeResult | SearchResult) -> dict[str, type]:
    """Record type per output layer, so that empty layers still get their fields."""
    return {name: (SearchHit if name == SEARCH_LAYER else CaptionRecord) for name in result_layers(result)}


def make_plan(source: RasterSource, extent: Extent, config: PlanConfig, tile_size: int) -> TilePlan:
    """Read the extent coarsely and plan the tiles with DRIS (or the uniform grid)."""
    config = dataclasses.replace(config, tile_size=tile_size)
    width, height = config.coarse_shape(extent)
    coarse = source.read(extent, max(8, width), max(8, height))
    return plan_tiles(extent, source.georef.native_gsd, coarse, config)


def tiles_to_encode(plan: TilePlan, metres_per_unit: float, tile_size: int) -> list[EncodedTile]:
    """The global view, the regions (quadrants of each root) and the DRIS leaves, each once.

    A region that is also a leaf is encoded once and captioned at both levels.
    """
    by_key: dict[str, EncodedTile] = {}
    nodes = {t.key: t for t in plan.nodes}

    def add(key: str, extent: Extent, depth: int, complexity: float, level: str) -> None:
        if key in by_key:
            by_key[key].levels += (level,)
            return
        gsd = max(extent.width, extent.height) / tile_size * metres_per_unit
        by_key[key] = EncodedTile(key, extent, depth, gsd, complexity, (level,))

    roots = plan.roots
    whole = plan.extent
    if len(roots) == 1:
        add(roots[0].key, roots[0].extent, 0, roots[0].complexity, "global")
    else:
        add("global", whole, 0, float(np.mean([r.complexity for r in roots])), "global")
    for root in roots:
        for index, quadrant in enumerate(root.extent.quadrants()):
            key = f"{root.key}.{index}"
            complexity = nodes[key].complexity if key in nodes else root.complexity
            add(key, quadrant, 1, complexity, "region")
    for leaf in plan.leaves:
        add(leaf.key, leaf.extent, leaf.depth, leaf.complexity, "object")
    return list(by_key.values())


def encode_extent(source: RasterSource, bundle: ModelBundle, extent: Extent | None, config: JobConfig,
                  progress: ProgressBackend) -> Encoding:
    """Plan, read and encode every tile of an extent."""
    timings = {}
    start = time.perf_counter()
    extent = source.georef.clip(extent or source.georef.extent)
    progress.set_stage("Reading an overview and planning tiles")
    plan = make_plan(source, extent, config.plan, bundle.image_size)
    check_canceled(progress)
    timings["plan_s"] = time.perf_counter() - start
    tiles = tiles_to_encode(plan, source.georef.metres_per_unit, bundle.image_size)
    progress.set_fraction(0.05)
    progress.set_stage(f"Encoding {len(tiles)} tiles")
    size = bundle.image_size
    embeddings = np.zeros((len(tiles), bundle.embed_dim), np.float32)
    read_s = encode_s = 0.0
    sub = SubProgress(progress, 0.05, 0.95)
    for first in range(0, len(tiles), config.batch_size):
        check_canceled(progress)
        batch = tiles[first:first + config.batch_size]
        t0 = time.perf_counter()
        pixels = np.stack([source.read(t.extent, size, size) for t in batch])
        t1 = time.perf_counter()
        embeddings[first:first + len(batch)] = bundle.encode_images(pixels, batch_size=len(batch))
        t2 = time.perf_counter()
        read_s += t1 - t0
        encode_s += t2 - t1
        sub.set_fraction((first + len(batch)) / len(tiles))
    timings.update(read_s=read_s, encode_s=encode_s, tiles=len(tiles))
    return Encoding(plan, tiles, embeddings, timings)


def caption_tiles(encoding: Encoding, bundle: ModelBundle, top_k: int, source_name: str) -> list[CaptionRecord]:
    """Caption every encoded tile at each level it stands for."""
    kb = bundle.knowledge_base
    ranked = {lvl: kb.rank(encoding.embeddings, lvl, top_k, bundle.logit_scale) for lvl in ("scene", "region", "object")}
    records = []
    for i, tile in enumerate(encoding.tiles):
        for level in tile.levels:
            own = ranked[LEVEL_OF_CAPTION[level]][i]
            caption = compose_caption(level, ranked["scene"][i], ranked["region"][i], ranked["object"][i])
            records.append(CaptionRecord(
                level=level, depth=tile.depth, extent=tile.extent, gsd_m=tile.gsd_m, caption=caption,
                concepts=[(c.name, p) for c, p in own], score=own[0][1] if own else 0.0,
                complexity=tile.complexity, source=source_name))
    order = {"global": 0, "region": 1, "object": 2}
    records.sort(key=lambda r: (order[r.level], r.depth, -r.extent.ymax, r.extent.xmin))
    return records


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
    encoding = encode_extent(source, bundle, extent, config, progress)
    progress.set_stage("Composing captions")
    t0 = time.perf_counter()
    records = caption_tiles(encoding, bundle, config.top_concepts, source.name)
    encoding.timings["caption_s"] = time.perf_counter() - t0
    progress.set_fraction(1.0)
    return DescribeResult(records, encoding.plan, source.georef.crs_wkt, list(source.warnings), encoding.timings)


def check_query(query: str) -> str:
    """The query stripped, or a sentence-error when there is nothing to search for."""
    text = (query or "").strip()
    if not text:
        raise RsVlmError("The search text is empty; type what to look for, for example \"storage tanks next to a river\".")
    return text


def search(source: RasterSource, bundle: ModelBundle, query: str, extent: Extent | None = None,
           config: JobConfig | None = None, progress: ProgressBackend | None = None) -> SearchResult:
    """Rank the tiles of an extent by similarity to a text query.

    Hits come from the regions and the DRIS leaves (the global view is the whole extent and
    would always contain the answer).  Scores are cosine similarities in the joint space.
    """
    text = check_query(query)
    config = config or JobConfig()
    progress = progress or NullProgress()
    query_emb = bundle.encode_texts([text])[0]
    encoding = encode_extent(source, bundle, extent, config, progress)
    progress.set_stage("Scoring tiles")
    records = caption_tiles(encoding, bundle, config.top_concepts, source.name)
    captions = {(r.extent, r.level): r.caption for r in records}
    scores = encoding.embeddings @ query_emb
    candidates = []
    for i, tile in enumerate(encoding.tiles):
        level = "object" if "object" in tile.levels else ("region" if "region" in tile.levels else None)
        if level is None:
            continue
        if config.min_score is not None and scores[i] < config.min_score:
            continue
        candidates.append((float(scores[i]), i, level))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    hits = []
    for rank, (score, i, level) in enumerate(candidates[:config.max_hits], start=1):
        tile = encoding.tiles[i]
        hits.append(SearchHit(query=text, rank=rank, score=score, level=level, depth=tile.depth, extent=tile.extent,
                              gsd_m=tile.gsd_m, caption=captions.get((tile.extent, level), ""), source=source.name))
    progress.set_fraction(1.0)
    if hits:
        progress.info(f"Best match for \"{text}\": score {hits[0].score:.3f}.")
    return SearchResult(text, hits, records, encoding.plan, source.georef.crs_wkt, list(source.warnings), encoding.timings)
