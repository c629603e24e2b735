"""The settings of a job, in one typed place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..planning.dris import PlanConfig

if TYPE_CHECKING:
    from ..locate.boxes import BoxConfig
    from ..locate.relevance import LocateConfig


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
        answers: How outlines are drawn: "auto" (one box per object from the box head when the query
            names an object, relevance outlines otherwise; :func:`locate.boxes.answer_kind`),
            "boxes" or "outlines".
        boxes: Minimum score, number and overlap of the boxes (None: :class:`locate.boxes.BoxConfig`).
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
    answers: str = "auto"
    boxes: "BoxConfig | None" = None
