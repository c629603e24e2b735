"""Ask: the answer to a question about an extent (see :mod:`..qa` for the kinds understood), with
the tiles that support it."""

from __future__ import annotations

import dataclasses

from ..bundle import ModelBundle
from ..encoding.encode import encode_extent
from ..expansion import describe_expansions, expand_queries
from ..geometry import Extent
from ..progress import NullProgress, ProgressBackend
from ..qa import SUBJECT_PROMPTS, parse_question
from ..raster import RasterSource
from ..records import EvidenceRecord
from ..seen_bias import warn_unfamiliar
from ..summaries import subject_share, subject_wins
from ..validation import text_warnings
from .captioning import tile_captions
from .classify import CLASS_PROMPTS, scene_class_list
from .config import JobConfig
from .query import SEARCH_TIERS, job_outlines, query_encoding, refined_rows, tile_level, tile_scores
from .results import AnswerResult


def ask(source: RasterSource, bundle: ModelBundle, question: str, extent: Extent | None = None,
        config: JobConfig | None = None, progress: ProgressBackend | None = None) -> AnswerResult:
    """Answer a question about an extent (see :mod:`qa` for the four kinds understood).

    Presence ("is there X?") compares the best tile's presence score with the threshold
    calibrated on val; "how much of the area is X?" is the area share of the fine tiles of
    Classify's plan where X passes it and beats every scene class (:mod:`summaries`); "where is X?" gives the best regions; "what is this area?" the best scene
    concepts of the whole view.  Every answer comes with its evidence tiles.
    """
    parsed = parse_question(question)
    config = config or JobConfig()
    progress = progress or NullProgress()
    query = None
    familiar = 1.0  # "what is this area?" names no subject: its answer is the knowledge base's own scenes
    if parsed.subject:
        what = f"The subject of the question (\"{parsed.subject[:40]}\")"
        for warning in text_warnings(bundle, parsed.subject, what):
            progress.warn(warning)
        familiar = warn_unfamiliar(bundle, [parsed.subject], CLASS_PROMPTS, progress)[0].score
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
        fine = [(float(scores[i]), i, tile_level(t)) for i, t in enumerate(tiles) if "object" in t.levels]
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
                               source=source.name, familiar=familiar)
                for k, (score, i, level) in enumerate(chosen, start=1)]
    outlines = job_outlines(encoding, bundle, parsed.subject, config, source, progress) \
        if parsed.kind == "where" else None
    for outline in outlines or []:
        outline.familiar = familiar
    progress.set_fraction(1.0)
    progress.info(answer)
    return AnswerResult(parsed, answer, value, evidence, encoding.plan, source.georef.crs_wkt, list(source.warnings),
                        encoding.timings, outlines)
