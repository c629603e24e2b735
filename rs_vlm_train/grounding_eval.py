"""How well captions keep to what the image shows (:mod:`rs_vlm_plugin.core.jobs.grounding`).

For images with reference sentences (UCM val, AID val with its RSICD sentences) each caption's
*things* (rivers, villas, storage tanks: the words of ``resources/grounding.json``) are compared
with the things the references name:

- **unsupported things**: the share of the things captions name that no reference names (lower is
  better; a caption's "river" in a forest that five people described without one);
- **captions with an unsupported thing**: the share of captions naming at least one;
- **reference things kept**: of the things the references name, the share that grounding lets the
  caption name (the cut's cost; measured without decoding, for every cut);
- BLEU-4 of the captions, so that a cut that keeps the words right but the sentences worse shows.

``--grounding`` of :mod:`rs_vlm_train.evaluate` runs it for several cuts (``top_k``) and names the
cut :func:`choose_cut` picks (fewest unsupported things among the cuts that keep at least 90 % of
the references' things; none did, so ``grounding.TOP_K`` is 0).
"""

from __future__ import annotations

import numpy as np

from rs_vlm_plugin.core.bundle import ModelBundle
from rs_vlm_plugin.core.jobs.grounding import banned_tokens, lexicon, named_things, seen_things

from .metrics import caption_scores

CUTS = (0, 4, 6, 8, 10, 12, 16)
"""The cuts compared (0: grounding off)."""


def reference_things(references: list[list[str]]) -> list[set[str]]:
    """The things each image's reference sentences name (any of them)."""
    groups = lexicon()
    return [set().union(*(named_things(s, groups) for s in refs)) for refs in references]


def grounding_scores(captions: list[str], truth: list[set[str]]) -> dict:
    """Unsupported-thing shares of captions against the references' things."""
    groups = lexicon()
    named = [named_things(c, groups) for c in captions]
    total = sum(len(n) for n in named)
    unsupported = sum(len(n - t) for n, t in zip(named, truth))
    return {"things_named": total,
            "unsupported_things": 100.0 * unsupported / total if total else 0.0,
            "captions_with_unsupported": 100.0 * float(np.mean([bool(n - t) for n, t in zip(named, truth)]))}


def kept_share(bundle: ModelBundle, tiers: dict[str, np.ndarray], truth: list[set[str]], top_k: int) -> float:
    """Percent of the references' things that the cut lets the captions name."""
    if top_k <= 0:
        return 100.0
    column = {name: j for j, name in enumerate(lexicon())}
    seen = seen_things(bundle, tiers, top_k)
    pairs = [(i, column[t]) for i, ts in enumerate(truth) for t in ts]
    return 100.0 * float(np.mean([seen[i, j] for i, j in pairs])) if pairs else 100.0


def eval_grounding(bundle: ModelBundle, tiers: dict[str, np.ndarray], references: list[list[str]],
                   cuts: tuple[int, ...] = CUTS, bleu: bool = True) -> dict:
    """Each cut's figures (see the module) on images with reference sentences."""
    truth = reference_things(references)
    rows = {}
    for k in cuts:
        captions = bundle.caption(tiers, banned=banned_tokens(bundle, tiers, k))
        row = {"reference_things_kept": kept_share(bundle, tiers, truth, k), **grounding_scores(captions, truth)}
        if bleu:
            row["BLEU-4"] = caption_scores({str(i): r for i, r in enumerate(references)},
                                           {str(i): c for i, c in enumerate(captions)}, meteor=False)["BLEU-4"]
        rows[str(k)] = row
    return {"images": len(references), "cuts": rows}


def choose_cut(rows: dict, min_kept: float = 90.0) -> int:
    """The cut with the fewest unsupported things among those that keep ``min_kept`` % of the
    references' things (0, grounding off, when none does)."""
    ok = [(r["unsupported_things"], -int(k), int(k)) for k, r in rows.items() if int(k) > 0
          and r["reference_things_kept"] >= min_kept]
    return min(ok)[2] if ok else 0
