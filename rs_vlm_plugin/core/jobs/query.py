"""What the query jobs share: the query text, the encoding a query plans (text-guided or not),
tile scores, and the outlines of what was found."""

from __future__ import annotations

import time

import numpy as np

from ..bundle import ModelBundle
from ..encoding.encode import encode_extent
from ..encoding.tiles import EncodedTile, Encoding
from ..errors import RsVlmError
from ..expansion import expand_queries
from ..geometry import Extent
from ..locate.boxes import answer_kind, boxes_note, find_boxes
from ..locate.guided import guided_encoding
from ..locate.outlines import find_outlines
from ..progress import ProgressBackend
from ..qa import QueryScorer, presence_scores
from ..raster import RasterSource
from ..records import OutlineRecord
from .config import JobConfig


SEARCH_TIERS = ("embedding", "regions")
"""What search and ask score tiles by; the object tokens of their few hits are encoded again (:func:`tile_tiers`)."""


def check_query(query: str) -> str:
    """The query stripped, or a sentence-error when there is nothing to search for."""
    text = (query or "").strip()
    if not text:
        raise RsVlmError("The search text is empty; type what to look for, for example \"storage tanks next to a river\".")
    return text


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


def tile_level(tile: EncodedTile) -> str | None:
    return "object" if "object" in tile.levels else ("region" if "region" in tile.levels else None)


def refined_rows(encoding: Encoding) -> set[int]:
    """Rows of a text-guided encoding's tiles that were read closer (some quadrant encoded): they are
    not answers, their children saw the same ground at a finer pixel size (a 896 px root as a hit
    covered 16 native tiles). Empty for other encodings, whose region tiles are answers of their own level."""
    if getattr(encoding, "outline_parts", None) is None:
        return set()
    parents = {t.key.rsplit(".", 1)[0] for t in encoding.tiles if "." in t.key}
    return {i for i, t in enumerate(encoding.tiles) if t.key in parents}


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
    (:func:`..locate.guided.guided_encoding`, guided by ``text``'s relevance maps where given) or
    the complexity plan / uniform grid."""
    if guided_job(config):
        return guided_encoding(source, bundle, extent, config, scorer, progress, text=text)
    return encode_extent(source, bundle, extent, config, progress, keep=None if config.outlines else SEARCH_TIERS)


def job_outlines(encoding: Encoding, bundle: ModelBundle, text: str, config: JobConfig, source: RasterSource,
                 progress: ProgressBackend) -> list[OutlineRecord] | None:
    """The outlines of what a query found (None when the job does not make them)."""
    if not config.outlines:
        return None
    kind = answer_kind(bundle, text, config.answers)
    t0 = time.perf_counter()
    if kind == "boxes":
        progress.set_stage("Finding each object")
        outlines = find_boxes(encoding, bundle, source, text, config.boxes, progress)
        progress.info(boxes_note(kind, text, len(outlines)))
    else:
        progress.set_stage("Outlining what was found")
        outlines = find_outlines(encoding, bundle, text, source.georef.metres_per_unit, source.name, config.locate)
        if bundle.box_head is not None:
            progress.info(boxes_note(kind, text))
    encoding.timings["outline_s"] = time.perf_counter() - t0
    if outlines:
        what = "boxes" if kind == "boxes" else "outlines"
        progress.info(f"{len(outlines)} {what} of \"{text}\" (best {outlines[0].score:.3f}).")
    return outlines
