"""Result records: what the jobs produce and the writers turn into features."""

from __future__ import annotations

from dataclasses import dataclass, field

from .geometry import Extent

LEVELS = ("global", "region", "object")


@dataclass
class CaptionRecord:
    """One captioned tile.

    Attributes:
        level: "global", "region" or "object".
        depth: Quadtree depth of the tile (0 is the whole extent).
        extent: The tile's footprint in the raster's CRS.
        gsd_m: Ground sample distance the model saw, in metres per model pixel.
        caption: The caption composed from the best concepts.
        concepts: Best concepts as (name, score), best first.
        score: The best concept's score (a probability over the knowledge base level).
        complexity: The DRIS content complexity of the tile in [0, 1].
        source: Name of the raster the tile came from.
    """

    level: str
    depth: int
    extent: Extent
    gsd_m: float
    caption: str
    concepts: list[tuple[str, float]] = field(default_factory=list)
    score: float = 0.0
    complexity: float = 0.0
    source: str = ""

    def concepts_text(self) -> str:
        """Concepts as "name 0.42; other 0.17" for an attribute table."""
        return "; ".join(f"{name} {score:.2f}" for name, score in self.concepts)


@dataclass
class SearchHit:
    """One tile that matches a text query.

    Attributes:
        query: The text the user typed.
        rank: 1 for the best hit.
        score: Cosine similarity between the query and the tile in the joint space.
        level: Level of the tile ("region" or "object").
        depth: Quadtree depth of the tile.
        extent: The tile's footprint in the raster's CRS.
        gsd_m: Ground sample distance in metres per model pixel.
        caption: The tile's caption, to show why it matched.
        source: Name of the raster.
        familiar: How familiar the model is with the query, in [0, 1] (``seen_bias.query_familiarity``;
            under 0.7 the job warns that it has seen little like it).
    """

    query: str
    rank: int
    score: float
    level: str
    depth: int
    extent: Extent
    gsd_m: float
    caption: str = ""
    source: str = ""
    familiar: float = 1.0


@dataclass
class ClassRecord:
    """One tile classified into a user's class list.

    Attributes:
        label: The best class.
        confidence: Its softmax probability over the class list.
        runner_up: The second class, to show close calls.
        level: "region" or "object" (the tiles that cover the extent).
        depth: Quadtree depth of the tile.
        extent: The tile's footprint in the raster's CRS.
        gsd_m: Ground sample distance in metres per model pixel.
        source: Name of the raster.
        familiar: How familiar the model is with the tile's class name, in [0, 1] (``seen_bias.query_familiarity``;
            under 0.7 the job warns that it has seen little like it).
    """

    label: str
    confidence: float
    runner_up: str
    level: str
    depth: int
    extent: Extent
    gsd_m: float
    source: str = ""
    familiar: float = 1.0


@dataclass
class EvidenceRecord:
    """A tile that supports the answer to a question.

    Attributes:
        question: The question as asked.
        answer: The answer in words (the same on every evidence tile of one question).
        rank: 1 for the strongest evidence.
        score: The tile's presence score for the question's subject (cosine similarity).
        level: "global", "region" or "object".
        depth: Quadtree depth of the tile.
        extent: The tile's footprint in the raster's CRS.
        caption: The tile's caption.
        source: Name of the raster.
        familiar: How familiar the model is with the question's subject, in [0, 1] (``seen_bias.query_familiarity``;
            under 0.7 the job warns that it has seen little like it).
    """

    question: str
    answer: str
    rank: int
    score: float
    level: str
    depth: int
    extent: Extent
    caption: str = ""
    source: str = ""
    familiar: float = 1.0


@dataclass
class PlanTileRecord:
    """One node of a DRIS plan, to show where the model spent its compute.

    Attributes:
        key: The node's quadtree path, for example "0.2.1" (see ``dris.Tile.key``).
        depth: Quadtree depth (0 for a root cell).
        complexity: Mean content complexity over the tile, in [0, 1].
        is_leaf: True for the tiles that were encoded (not split further).
        gsd_m: Ground sample distance the model saw (or would see), in metres per model pixel.
        extent: The tile's footprint in the raster's CRS.
        source: Name of the raster.
        reason: Why the tile is as fine as it is: "root", or why its parent was split
            ("complexity", "query" or "uniform"); for a node that was split, why it was.
        score: The tile's query score where a query guided the plan (None otherwise).
    """

    key: str
    depth: int
    complexity: float
    is_leaf: bool
    gsd_m: float
    extent: Extent
    source: str = ""
    reason: str = ""
    score: float | None = None


@dataclass
class OutlineRecord:
    """One outline of what a query found: merged cells of a relevance map, or a box around a compact blob.

    Attributes:
        query: The text searched for (the subject of a question for Ask).
        rank: 1 for the best outline.
        score: The best calibrated relevance of its cells, in [0, 1] (the query against background texts).
        shape: "box" (a compact blob, drawn as its bounding box) or "polygon" (the merged cells).
        cells: Relevance-map cells in the outline.
        area_m2: Its area in square metres.
        depth: Quadtree depth of the finest tile it came from.
        gsd_m: Ground sample distance of that tile, in metres per model pixel.
        extent: Its bounding box in the raster's CRS.
        geometry_wkb: The outline as a WKB polygon in the raster's CRS (the writer's geometry).
        source: Name of the raster.
        familiar: How familiar the model is with the query, in [0, 1] (``seen_bias.query_familiarity``;
            under 0.7 the job warns that it has seen little like it).
        found_by: "boxes" (the object box head: one box per object, ``score`` is ``heat * p(query)``)
            or "relevance" (an outline of the relevance map; see :func:`locate.boxes.answer_kind`).
        tile: Key of the tile a box came from (empty for relevance outlines, which may span tiles).
    """

    query: str
    rank: int
    score: float
    shape: str
    cells: int
    area_m2: float
    depth: int
    gsd_m: float
    extent: Extent
    geometry_wkb: bytes = b""
    source: str = ""
    familiar: float = 1.0
    found_by: str = "relevance"
    tile: str = ""


@dataclass
class IndexTile:
    """One tile of an embedding index (its footprint layer ``index_tiles``).

    Attributes:
        tile_id: Row of the tile in the index's embedding matrices.
        key: The tile's quadtree key in the plan (for example "0.2.1").
        level: "region" or "object".
        depth: Quadtree depth of the tile.
        extent: The tile's footprint in the raster's CRS.
        gsd_m: Ground sample distance the model saw, in metres per model pixel.
        complexity: The DRIS content complexity of the tile in [0, 1].
    """

    tile_id: int
    key: str
    level: str
    depth: int
    extent: Extent
    gsd_m: float
    complexity: float = 0.0
