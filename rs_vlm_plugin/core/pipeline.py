"""The main jobs: describe an extent at three levels, search it by text, classify its tiles
into a user's classes, and answer questions about it.

    plan (DRIS) -> read tiles -> encode three tiers (ONNX) -> decode captions / rank concepts /
    score the query -> records
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union

import numpy as np

from .bundle import TIER_OUTPUTS, ModelBundle
from .caption_stream import CaptionStream
from .captions import compose_caption
from .dris import PlanConfig, TilePlan, plan_tiles
from .errors import RsVlmError
from .expansion import describe_expansions, expand_queries, prompt_ensemble
from .geometry import Extent
from .knowledge import LEVEL_OF_CAPTION
from .prefetch import prefetched
from .progress import NullProgress, ProgressBackend, SubProgress, check_canceled
from .raster import RasterSource
from .qa import SUBJECT_PROMPTS, Question, QueryScorer, parse_question, presence_scores
from .records import CaptionRecord, ClassRecord, EvidenceRecord, OutlineRecord, SearchHit
from .seen_bias import seen_bias_offsets
from .summaries import subject_share, subject_wins, whole_view_classes
from .validation import check_pixel_size, text_warnings

if TYPE_CHECKING:
    from .locate.relevance import LocateConfig

CAPTION_LAYERS = {"global": "captions_global", "region": "captions_region", "object": "captions_object"}
SEARCH_TIERS = ("embedding", "regions")
"""What search and ask score tiles by; the object tokens of their few hits are encoded again (:func:`tile_tiers`)."""
CLASSIFY_TIERS = ("embedding",)
SEARCH_LAYER = "search_hits"
SEARCH_OUTLINE_LAYER = "search_outlines"
EVIDENCE_OUTLINE_LAYER = "evidence_outlines"
CLASS_LAYER = "classes"
EVIDENCE_LAYER = "evidence"
CLASS_PROMPTS = ("an aerial image of {}.", "a satellite photo of {}.", "there is {} in the image.",
                 "a remote sensing image of {}.")


@dataclass(frozen=True)
class JobConfig:
    """Settings of a describe or search job.

    Attributes:
        plan: The DRIS planner's settings (tile size is replaced by the model's input size).
        batch_size: Tiles per ONNX batch; cancellation is checked between batches.
        top_concepts: Concepts kept per tile and level.
        max_hits: Search hits kept (best first).
        min_score: Search hits below this cosine similarity are dropped (None keeps all).
        mask_wkb: Optional area of interest (WKB polygon(s) in the raster's CRS, for example the
            selected polygons of a vector layer): region and fine tiles that miss it are neither
            encoded nor reported; the extent should be the mask's bounding box.
        knowledge: Score search queries, class names and question subjects together with what
            the knowledge base knows of the concepts they name (see :mod:`expansion`); False
            scores the texts alone.
        seen_bias: Correct the scores of the user's class list for the model's bias towards its
            training classes (calibrated stacking, see :mod:`seen_bias`; the default list, the
            knowledge base's scene concepts, is always scored plain); False ranks the raw scores.
        guided: Plan with text-guided DRIS (coarse first, refined where the query scores, down to
            native resolution; :mod:`locate.guided`). None: the job's default (on for Search and
            for Ask about a subject; off for Describe, Classify and the index, which keep the
            complexity-driven plan unless ``guide_query`` is given).
        outlines: Search and "where is X?" also outline what they find (relevance maps of the
            finest tiles' object tokens, vectorised; :mod:`locate.outlines`).
        guide_query: A text that guides the plan of Describe and of the index (with ``guided``
            not False); empty: the complexity plan.
        locate: Threshold and shapes of the outlines (None: :meth:`locate.relevance.LocateConfig.for_bundle`).
    """

    plan: PlanConfig = field(default_factory=PlanConfig)
    batch_size: int = 16
    top_concepts: int = 3
    max_hits: int = 10
    min_score: float | None = None
    mask_wkb: bytes | None = None
    knowledge: bool = True
    seen_bias: bool = True
    guided: bool | None = None
    outlines: bool = True
    guide_query: str = ""
    locate: "LocateConfig | None" = None


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
    outlines: list[OutlineRecord] | None = None  # None: not asked for (no layer is written)


@dataclass
class ClassifyResult:
    """The tiles covering an extent, each with its best class of a list."""

    classes: list[str]
    records: list[ClassRecord]
    scene: list[tuple[str, float]]
    plan: TilePlan
    crs_wkt: str | None
    warnings: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def shares(self) -> dict[str, float]:
        """Share of the classified area taken by each class (fine tiles, by area)."""
        total = sum(r.extent.width * r.extent.height for r in self.records) or 1.0
        out = {c: 0.0 for c in self.classes}
        for r in self.records:
            out[r.label] += r.extent.width * r.extent.height / total
        return out


@dataclass
class AnswerResult:
    """The answer to a question about an extent, with the tiles that support it."""

    question: Question
    answer: str
    value: float | bool | str
    evidence: list[EvidenceRecord]
    plan: TilePlan
    crs_wkt: str | None
    warnings: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    outlines: list[OutlineRecord] | None = None  # "where is X?" only


BatchHook = Callable[[list[EncodedTile], dict[str, np.ndarray]], dict[str, np.ndarray]]
"""``(tiles, tiers) -> tiers to keep``: what :func:`encode_extent` calls with each batch."""

# typing.Union, not ``|``: a module-level alias is evaluated at import, and Python 3.9 (QGIS's macOS
# builds up to 3.40) has no ``|`` between classes.
AnyResult = Union[DescribeResult, SearchResult, ClassifyResult, AnswerResult]


def result_layers(result: AnyResult) -> dict[str, list]:
    """Records per output layer name, ready for :func:`gpkg.write_geopackage`."""
    if isinstance(result, SearchResult):
        outlines = {} if result.outlines is None else {SEARCH_OUTLINE_LAYER: result.outlines}
        return {SEARCH_LAYER: result.hits, **outlines}
    if isinstance(result, ClassifyResult):
        return {CLASS_LAYER: result.records}
    if isinstance(result, AnswerResult):
        outlines = {} if result.outlines is None else {EVIDENCE_OUTLINE_LAYER: result.outlines}
        return {EVIDENCE_LAYER: result.evidence, **outlines}
    grouped = result.by_level()
    return {CAPTION_LAYERS[level]: grouped[level] for level in CAPTION_LAYERS}


def result_kinds(result: AnyResult) -> dict[str, type]:
    """Record type per output layer, so that empty layers still get their fields."""
    kinds = {SEARCH_LAYER: SearchHit, CLASS_LAYER: ClassRecord, EVIDENCE_LAYER: EvidenceRecord,
             SEARCH_OUTLINE_LAYER: OutlineRecord, EVIDENCE_OUTLINE_LAYER: OutlineRecord}
    return {name: kinds.get(name, CaptionRecord) for name in result_layers(result)}


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


def encode_extent(source: RasterSource, bundle: ModelBundle, extent: Extent | None, config: JobConfig,
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


def caption_tiles(encoding: Encoding, bundle: ModelBundle, top_k: int, source_name: str,
                  progress: ProgressBackend | None = None, decoded: list[str] | None = None) -> list[CaptionRecord]:
    """Caption every encoded tile at each level it stands for.

    With a caption decoder each tile's caption is decoded (beam search) from its own three
    tiers of tokens; without one (imported CLIP models) it is composed from the best
    knowledge-base concepts.  Concepts and scores always come from the knowledge base.

    Args:
        decoded: The tiles' captions when they were decoded elsewhere (by a cluster's workers,
            :mod:`distributed.tasks`); the tiers then need only the embeddings.
    """
    kb = bundle.knowledge_base
    ranked = {lvl: kb.rank(encoding.embeddings, lvl, top_k, bundle.logit_scale) for lvl in ("scene", "region", "object")}
    if decoded is None and bundle.has_decoder and len(encoding.tiles):
        if progress is not None:
            progress.set_stage(f"Writing captions for {len(encoding.tiles)} tiles")
        decoded = bundle.caption(encoding.tiers, progress=progress)
    records = []
    for i, tile in enumerate(encoding.tiles):
        for level in tile.levels:
            own = ranked[LEVEL_OF_CAPTION[level]][i]
            caption = decoded[i] if decoded is not None else \
                compose_caption(level, ranked["scene"][i], ranked["region"][i], ranked["object"][i])
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
    # Captions are decoded block by block as the tiles are encoded, so the job never holds every
    # tile's tokens (memory stays flat in the raster's size); the captions are the same.
    stream = CaptionStream(bundle, progress)
    guide = guide_scorer(bundle, config)
    if guide is not None:  # a text guides the plan (JobConfig.guide_query): coarse first, refined where it scores
        from .locate.guided import guided_encoding

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


def check_query(query: str) -> str:
    """The query stripped, or a sentence-error when there is nothing to search for."""
    text = (query or "").strip()
    if not text:
        raise RsVlmError("The search text is empty; type what to look for, for example \"storage tanks next to a river\".")
    return text


def split_classes(text: str | None) -> list[str] | None:
    """The names of a comma-separated class list; None when it is empty (the knowledge base's scenes).

    Raises:
        RsVlmError: The text holds only commas and blanks.
    """
    if not (text or "").strip():
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise RsVlmError(f"The class list {text!r} names no classes; give at least two names separated by commas, "
                         "for example \"forest, farmland, water\", or leave it empty for the knowledge base's "
                         "scene concepts.")
    return names


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


def tile_captions(encoding: Encoding, bundle: ModelBundle, rows: list[int], top_k: int = 3) -> dict[int, str]:
    """Captions of some tiles only (decoded, or composed without a decoder)."""
    if not rows:
        return {}
    if bundle.has_decoder:
        return dict(zip(rows, bundle.caption(tile_tiers(encoding, bundle, rows))))
    return dict(zip(rows, composed_captions(bundle, encoding.embeddings[rows], top_k)))


def composed_captions(bundle: ModelBundle, embeddings: np.ndarray, top_k: int = 3,
                      levels: list[str] | None = None) -> list[str]:
    """Captions composed from the knowledge base's best concepts for tiles' global embeddings
    (no decoder and no pixels needed).

    Args:
        embeddings: (N, D) the tiles' global tokens.
        levels: Caption level of each tile ("global", "region" or "object"); "region" for all when None.
    """
    kb = bundle.knowledge_base
    ranked = {lvl: kb.rank(embeddings, lvl, top_k, bundle.logit_scale) for lvl in ("scene", "region", "object")}
    return [compose_caption(levels[k] if levels else "region", ranked["scene"][k], ranked["region"][k],
                            ranked["object"][k]) for k in range(len(embeddings))]


def query_embedding(bundle: ModelBundle, subject: str) -> np.ndarray:
    """Normalised mean embedding of a subject's prompt ensemble (the subject alone, no knowledge)."""
    return prompt_ensemble(bundle, [subject], SUBJECT_PROMPTS)[0]


def tile_scores(encoding: Encoding, query: np.ndarray | QueryScorer, bundle: ModelBundle | None = None) -> np.ndarray:
    """Score of every tile for a query: the best of its global token and 13 region tokens.

    With ``bundle`` the score is the contrastive presence probability against the knowledge
    base (questions); without, the cosine similarity (search ranking).

    Args:
        query: A (D,) normalised embedding, or a scorer such as
            :meth:`expansion.ExpandedQueries.scorer` (the query with its knowledge-base parts).
    """
    t = encoding.tiers
    if bundle is None:
        return presence_scores(t["embedding"], t["regions"], query)
    return presence_scores(t["embedding"], t["regions"], query, bundle.knowledge_base.embeddings, bundle.logit_scale)


def _tile_level(tile: EncodedTile) -> str | None:
    return "object" if "object" in tile.levels else ("region" if "region" in tile.levels else None)


def refined_rows(encoding: Encoding) -> set[int]:
    """Rows of a text-guided encoding's tiles that were read closer (some quadrant encoded): they are
    not answers, their children saw the same ground at a finer pixel size (a 896 px root as a hit
    covered 16 native tiles). Empty for other encodings, whose region tiles are answers of their own level."""
    if getattr(encoding, "outline_parts", None) is None:
        return set()
    parents = {t.key.rsplit(".", 1)[0] for t in encoding.tiles if "." in t.key}
    return {i for i, t in enumerate(encoding.tiles) if t.key in parents}


def search(source: RasterSource, bundle: ModelBundle, query: str, extent: Extent | None = None,
           config: JobConfig | None = None, progress: ProgressBackend | None = None) -> SearchResult:
    """Rank the tiles of an extent by similarity to a text query.

    Hits come from the regions and the DRIS leaves (the global view is the whole extent and
    would always contain the answer).  A tile's score is the cosine similarity of the query
    with the best of its tokens (global and 13 region windows), so that something filling a
    part of a tile is found as well as a tile that is all of it.  With ``config.knowledge`` the
    query is scored together with its knowledge-base parts (synonyms of the concepts it names,
    see :mod:`expansion`).
    """
    text = check_query(query)
    config = config or JobConfig()
    progress = progress or NullProgress()
    for warning in text_warnings(bundle, text):
        progress.warn(warning)
    queries = expand_queries(bundle, [text], knowledge=config.knowledge)
    note = describe_expansions(queries, 0, "searched")
    if note:
        progress.info(note)
    encoding = query_encoding(source, bundle, extent, config, progress, queries.scorer(0), text)
    progress.set_stage("Scoring tiles")
    scores = tile_scores(encoding, queries.scorer(0))
    candidates = []
    refined = refined_rows(encoding)
    for i, tile in enumerate(encoding.tiles):
        level = _tile_level(tile)
        if level is None or i in refined:
            continue
        if config.min_score is not None and scores[i] < config.min_score:
            continue
        candidates.append((float(scores[i]), i, level))
    candidates.sort(key=lambda c: (-c[0], c[1]))
    candidates = candidates[:config.max_hits]
    t0 = time.perf_counter()
    captions = tile_captions(encoding, bundle, [i for _, i, _ in candidates], config.top_concepts)
    encoding.timings["caption_s"] = time.perf_counter() - t0
    hits = []
    for rank, (score, i, level) in enumerate(candidates, start=1):
        tile = encoding.tiles[i]
        hits.append(SearchHit(query=text, rank=rank, score=score, level=level, depth=tile.depth, extent=tile.extent,
                              gsd_m=tile.gsd_m, caption=captions.get(i, ""), source=source.name))
    progress.set_fraction(1.0)
    if hits:
        progress.info(f"Best match for \"{text}\": score {hits[0].score:.3f}.")
    outlines = job_outlines(encoding, bundle, text, config, source, progress)
    return SearchResult(text, hits, [], encoding.plan, source.georef.crs_wkt, list(source.warnings), encoding.timings,
                        outlines)


def guide_scorer(bundle: ModelBundle, config: JobConfig) -> QueryScorer | None:
    """The scorer of ``config.guide_query`` that guides the plan of Describe and of the index, or None
    (no guide text, or ``guided=False``: the complexity plan)."""
    text = (config.guide_query or "").strip()
    if not text or config.guided is False:
        return None
    return expand_queries(bundle, [text], knowledge=config.knowledge).scorer(0)


def guided_job(config: JobConfig) -> bool:
    """Whether a query job plans with text-guided DRIS: ``config.guided``, by default unless the
    uniform grid was asked for."""
    return config.guided if config.guided is not None else not config.plan.uniform


def query_encoding(source: RasterSource, bundle: ModelBundle, extent: Extent | None, config: JobConfig,
                   progress: ProgressBackend, scorer: QueryScorer, text: str | None = None) -> Encoding:
    """The encoding of a query job (search, ask about a subject): text-guided DRIS
    (:func:`locate.guided.guided_encoding`, guided by ``text``'s relevance maps where given) or
    the complexity plan / uniform grid."""
    if guided_job(config):
        from .locate.guided import guided_encoding

        return guided_encoding(source, bundle, extent, config, scorer, progress, text=text)
    return encode_extent(source, bundle, extent, config, progress, keep=None if config.outlines else SEARCH_TIERS)


def job_outlines(encoding: Encoding, bundle: ModelBundle, text: str, config: JobConfig, source: RasterSource,
                 progress: ProgressBackend) -> list[OutlineRecord] | None:
    """The outlines of what a query found (None when the job does not make them)."""
    if not config.outlines:
        return None
    from .locate.outlines import find_outlines

    progress.set_stage("Outlining what was found")
    t0 = time.perf_counter()
    outlines = find_outlines(encoding, bundle, text, source.georef.metres_per_unit, source.name, config.locate)
    encoding.timings["outline_s"] = time.perf_counter() - t0
    if outlines:
        progress.info(f"{len(outlines)} outlines of \"{text}\" (best {outlines[0].score:.3f}).")
    return outlines


def scene_class_list(bundle: ModelBundle) -> list[str]:
    """The knowledge base's scene concepts, the default class list."""
    kb = bundle.knowledge_base
    return [kb.concepts[i].name for i in kb.level_indices("scene")]


def class_embeddings(bundle: ModelBundle, classes: list[str], prompts: tuple[str, ...] = CLASS_PROMPTS) -> np.ndarray:
    """(C, D) normalised prompt-ensemble embeddings of class names (the names alone, no knowledge)."""
    return prompt_ensemble(bundle, classes, prompts)


def check_classes(classes: list[str] | None, bundle: ModelBundle) -> list[str]:
    """A clean class list: stripped, de-duplicated; the knowledge base's scenes when empty."""
    seen, out = set(), []
    for c in classes or []:
        name = c.strip()
        if name and name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    if classes and len(out) < 2:
        raise RsVlmError("Give at least two classes to choose from, for example \"forest, farmland, water\".")
    return out or scene_class_list(bundle)


def classify(source: RasterSource, bundle: ModelBundle, classes: list[str] | None = None, extent: Extent | None = None,
             config: JobConfig | None = None, progress: ProgressBackend | None = None) -> ClassifyResult:
    """Classify the fine tiles of an extent (DRIS leaves) into a class list with prompt ensembles.

    With ``config.knowledge`` each class is scored together with its knowledge-base parts
    (synonyms, description and sub-concepts of the concept it names, see :mod:`expansion`);
    with ``config.seen_bias`` and a model calibrated for it, scores are corrected for the model's
    bias towards its training classes (:mod:`seen_bias`).

    Args:
        classes: The user's class names; None or empty uses the knowledge base's scene concepts.
    """
    config = config or JobConfig()
    progress = progress or NullProgress()
    user_list = bool(classes)
    classes = check_classes(classes, bundle)
    for name in classes:
        for warning in text_warnings(bundle, name, f"The class name \"{name[:40]}\""):
            progress.warn(warning)
    queries = expand_queries(bundle, classes, CLASS_PROMPTS, knowledge=config.knowledge)
    expanded = sum(bool(queries.expansions(k)) for k in range(len(classes)))
    if expanded:
        progress.info(f"{expanded} of {len(classes)} classes are also scored by their names, descriptions "
                      "and sub-concepts in the knowledge base.")
    encoding = encode_extent(source, bundle, extent, config, progress, keep=CLASSIFY_TIERS)
    progress.set_stage("Classifying tiles")
    # The margin is calibrated for class lists like the user's (a few classes, most of them trained);
    # the default list, the knowledge base's scene concepts, is mostly untrained names and is scored plain.
    offsets = seen_bias_offsets(bundle, classes, CLASS_PROMPTS, config.seen_bias and user_list)
    if np.ptp(offsets) > 1e-6:  # some classes less familiar than others: the correction changes the ranking
        lifted = [classes[k] for k in np.argsort(-offsets)[:3] if offsets[k] > offsets.min() + 1e-6]
        progress.info(f"Scores are corrected for the model's bias towards the classes it was trained on "
                      f"(calibrated stacking); the least familiar here: {', '.join(lifted)}.")
    logits = bundle.logit_scale * (queries.scores(encoding.embeddings) + offsets)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1)
    records, scene = [], []
    for i, tile in enumerate(encoding.tiles):
        best, second = order[i, 0], order[i, 1] if len(classes) > 1 else order[i, 0]
        if "global" in tile.levels:
            scene = [(classes[j], float(probs[i, j])) for j in order[i, :3]]
        if "object" in tile.levels:  # the leaves tile the extent exactly once
            records.append(ClassRecord(classes[best], float(probs[i, best]), classes[second], "object", tile.depth,
                                       tile.extent, tile.gsd_m, source.name))
    scene, note = whole_view_classes(classes, records, scene)  # the class of the tiles, not of one image
    if note:
        progress.info(note)
    progress.set_fraction(1.0)
    return ClassifyResult(classes, records, scene, encoding.plan, source.georef.crs_wkt, list(source.warnings),
                          encoding.timings)


def ask(source: RasterSource, bundle: ModelBundle, question: str, extent: Extent | None = None,
        config: JobConfig | None = None, progress: ProgressBackend | None = None) -> AnswerResult:
    """Answer a question about an extent (see :mod:`qa` for the four kinds understood).

    Presence ("is there X?") compares the best tile's presence score with the threshold
    calibrated on val; "how much of the area is X?" is the area share of the fine tiles whose
    score passes it; "where is X?" gives the best regions; "what is this area?" the best scene
    concepts of the whole view.  Every answer comes with its evidence tiles.
    """
    parsed = parse_question(question)
    config = config or JobConfig()
    progress = progress or NullProgress()
    query = None
    if parsed.subject:
        what = f"The subject of the question (\"{parsed.subject[:40]}\")"
        for warning in text_warnings(bundle, parsed.subject, what):
            progress.warn(warning)
        queries = expand_queries(bundle, [parsed.subject], SUBJECT_PROMPTS, knowledge=config.knowledge)
        query = queries.scorer(0)
        note = describe_expansions(queries, 0)
        if note:
            progress.info(note)
    # "where is X?" outlines X; presence needs the tiles' scores; a share is of the plan Classify
    # reads (a plan guided by X would read X's places closer and the rest coarsely: a biased count)
    if parsed.subject and parsed.kind != "share":
        config = config if parsed.kind == "where" else dataclasses.replace(config, outlines=False)
        encoding = query_encoding(source, bundle, extent, config, progress, query, parsed.subject)
    else:
        encoding = encode_extent(source, bundle, extent, config, progress, keep=SEARCH_TIERS)
    progress.set_stage("Answering")
    threshold = bundle.presence_threshold
    tiles = encoding.tiles
    if parsed.kind == "scene":
        kb = bundle.knowledge_base
        g = next(i for i, t in enumerate(tiles) if "global" in t.levels)
        ranked = kb.rank(encoding.embeddings[g:g + 1], "scene", 3, bundle.logit_scale)[0]
        names = [c.name for c, _ in ranked]
        answer = f"Mostly {names[0]}" + (f"; also like {', '.join(names[1:])}" if len(names) > 1 else "") + "."
        chosen = [(float(ranked[0][1]), g, "global")]
        value: float | bool | str = names[0]
    else:
        scores = tile_scores(encoding, query, bundle)
        fine = [(float(scores[i]), i, _tile_level(t)) for i, t in enumerate(tiles) if "object" in t.levels]
        refined = refined_rows(encoding)
        regions = [(float(scores[i]), i, "region") for i, t in enumerate(tiles) if "region" in t.levels
                   and i not in refined]
        fine.sort(key=lambda c: -c[0])
        if parsed.kind == "presence":
            best = max(fine + regions, key=lambda c: c[0])
            value = best[0] >= threshold
            chosen = [c for c in fine if c[0] >= threshold][:5] or [best]
            answer = (f"Yes: {parsed.subject} is likely here (best score {best[0]:.2f}, threshold {threshold:.2f})."
                      if value else
                      f"No {parsed.subject} found (best score {best[0]:.2f} is under the threshold {threshold:.2f}).")
        elif parsed.kind == "where":
            pool = sorted(regions + fine, key=lambda c: -c[0])
            chosen = pool[:min(config.max_hits, 5)]
            value = float(chosen[0][0]) if chosen else 0.0
            answer = (f"The best {len(chosen)} places for {parsed.subject} are on the evidence layer "
                      f"(best score {value:.2f}" + ("" if value >= threshold else f", under the presence threshold {threshold:.2f}")
                      + ").")
        else:  # share: tiles where the subject passes and wins over the scene classes (core/summaries.py)
            best, names = subject_wins(bundle, parsed.subject, encoding.embeddings[[i for _, i, _ in fine]],
                                       scene_class_list(bundle), CLASS_PROMPTS, config.knowledge)
            value, counted, answer = subject_share(parsed.subject, [(c[0], c[1]) for c in fine],
                                                   {i: tiles[i].extent.width * tiles[i].extent.height for _, i, _ in fine},
                                                   best, names, threshold)
            chosen = [c for c in fine if c[1] in set(counted)]
    captions = tile_captions(encoding, bundle, [i for _, i, _ in chosen[:10]], config.top_concepts)
    evidence = [EvidenceRecord(question=parsed.text, answer=answer, rank=k, score=score, level=level or "object",
                               depth=tiles[i].depth, extent=tiles[i].extent, caption=captions.get(i, ""),
                               source=source.name)
                for k, (score, i, level) in enumerate(chosen, start=1)]
    outlines = job_outlines(encoding, bundle, parsed.subject, config, source, progress) \
        if parsed.kind == "where" else None
    progress.set_fraction(1.0)
    progress.info(answer)
    return AnswerResult(parsed, answer, value, evidence, encoding.plan, source.georef.crs_wkt, list(source.warnings),
                        encoding.timings, outlines)
