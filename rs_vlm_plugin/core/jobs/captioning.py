"""Captions of encoded tiles: every tile at each level it stands for (Describe), or a few of them
(the hits of Search and Ask, the index's), decoded or composed from the knowledge base."""

from __future__ import annotations

import numpy as np

from ..bundle import ModelBundle
from ..captions import compose_caption
from ..encoding.encode import tile_tiers
from ..encoding.tiles import Encoding
from ..knowledge import LEVEL_OF_CAPTION
from ..progress import ProgressBackend
from ..records import CaptionRecord
from .grounding import grounded_captions


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
        decoded = grounded_captions(bundle, encoding.tiers, progress=progress)
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


def tile_captions(encoding: Encoding, bundle: ModelBundle, rows: list[int], top_k: int = 3) -> dict[int, str]:
    """Captions of some tiles only (decoded, or composed without a decoder)."""
    if not rows:
        return {}
    if bundle.has_decoder:
        return dict(zip(rows, grounded_captions(bundle, tile_tiers(encoding, bundle, rows))))
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
