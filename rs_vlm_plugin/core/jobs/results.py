"""What the jobs return, and the output layers their records go to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from ..planning.dris import TilePlan
from ..qa import Question
from ..records import CaptionRecord, ClassRecord, EvidenceRecord, OutlineRecord, SearchHit


CAPTION_LAYERS = {"global": "captions_global", "region": "captions_region", "object": "captions_object"}

SEARCH_LAYER = "search_hits"

SEARCH_OUTLINE_LAYER = "search_outlines"

EVIDENCE_OUTLINE_LAYER = "evidence_outlines"

CLASS_LAYER = "classes"

EVIDENCE_LAYER = "evidence"


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
