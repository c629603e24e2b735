"""Search: the tiles of an extent ranked by similarity to a text, with outlines of what they show."""

from __future__ import annotations

import time

from ..bundle import ModelBundle
from ..expansion import describe_expansions, expand_queries
from ..geometry import Extent
from ..progress import NullProgress, ProgressBackend
from ..raster import RasterSource
from ..records import SearchHit
from ..seen_bias import warn_unfamiliar
from ..validation import text_warnings
from .captioning import tile_captions
from .classify import CLASS_PROMPTS
from .config import JobConfig
from .query import check_query, job_outlines, query_encoding, refined_rows, tile_level, tile_scores
from .results import SearchResult


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
    familiar = warn_unfamiliar(bundle, [text], CLASS_PROMPTS, progress)[0].score
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
        level = tile_level(tile)
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
                              gsd_m=tile.gsd_m, caption=captions.get(i, ""), source=source.name, familiar=familiar))
    progress.set_fraction(1.0)
    if hits:
        progress.info(f"Best match for \"{text}\": score {hits[0].score:.3f}.")
    outlines = job_outlines(encoding, bundle, text, config, source, progress)
    for outline in outlines or []:
        outline.familiar = familiar
    return SearchResult(text, hits, [], encoding.plan, source.georef.crs_wkt, list(source.warnings), encoding.timings,
                        outlines)
