"""Grounded captions: a tile's caption may name only what the tile's own tokens see.

The decoder writes from a tile's three tiers, but it is also a language model: after "a road
through a forest" it may go on with "next to a river" because the training sentences often did.
Before decoding, each tile's own global token (an object tile's is the object tier's view of it)
is compared with the things of :file:`resources/grounding.json` (rivers, villas, buildings, storage
tanks, ...); the words of a thing that is not among the tile's :data:`TOP_K` best-evidenced
(:func:`thing_scores`) may not be written in its caption
(beam search gives them no probability), so the decoder says what it does see instead.

``TOP_K`` is 0, grounding off, because on val it did not pay (``python -m rs_vlm_train.evaluate
--data ../shared/data --grounding``, the version-4 candidate): the cuts 4-16 removed at most 2 points of the
things no reference names (UCM val 7.0 % -> 4.7-7.9 %, AID val 17.9 % -> 16.3-18.0 %) while they kept
only 55-87 % of the things the references do name and cost UCM BLEU-4 1.8-4.5 points; on the demo
scene the version-4 candidate writes 2 river captions without it and 3 with a cut of 12. A tile's global token
ranks the things too weakly for this to be a good filter; the figures are in MODEL_CARD.md. A
model's manifest may turn it on (``decoder.grounding.top_k``), the evaluation measures any cut.

May import: the bundle, expansion (prompt ensembles), numpy. Imported by the caption jobs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from ..bundle import ModelBundle
from ..expansion import prompt_ensemble

LEXICON_PATH = Path(__file__).resolve().parents[2] / "resources" / "grounding.json"
PROMPTS = ("an aerial image of {}.", "a satellite photo of {}.", "there is {} in the image.")
TOP_K = 0
"""A thing may be named when it is among this many things best evidenced by the tile's token (0: any)."""


@functools.lru_cache(maxsize=4)
def lexicon(path: Path = LEXICON_PATH) -> dict[str, tuple[str, ...]]:
    """Thing -> the decoder words that name it (read once per file; do not modify the result)."""
    groups = json.loads(Path(path).read_text(encoding="utf-8"))["groups"]
    return {name: tuple(words) for name, words in groups.items()}


def top_k_of(bundle: ModelBundle) -> int:
    """The bundle's grounding cut (its manifest's, else :data:`TOP_K`)."""
    return int(bundle.manifest.get("decoder", {}).get("grounding", {}).get("top_k", TOP_K))


def thing_embeddings(bundle: ModelBundle) -> tuple[list[str], np.ndarray]:
    """The lexicon's things and their (T, D) prompt-ensemble embeddings (computed once per bundle)."""
    names = list(lexicon())
    return names, bundle.text_memo(("grounding", tuple(names)), lambda: prompt_ensemble(bundle, names, PROMPTS))


def image_mean(bundle: ModelBundle) -> np.ndarray:
    """The mean global embedding of the model's training images (``image_mean.npy`` of the bundle's
    knowledge base). A bundle exported before it was written has only each concept's similarity to
    it (``kb_bias.npy``); the mean is then recovered from those by least squares (its part in the
    span of the concepts' embeddings, which is where the things' texts lie too); zeros without either."""
    def make() -> np.ndarray:
        kb = bundle.manifest.get("knowledge_base", {})
        if kb.get("image_mean"):
            return np.load(bundle.folder / kb["image_mean"], allow_pickle=False).astype(np.float32)
        if kb.get("bias") and "embeddings" in kb:
            concepts = np.load(bundle.folder / kb["embeddings"], allow_pickle=False).astype(np.float64)
            bias = np.load(bundle.folder / kb["bias"], allow_pickle=False).astype(np.float64)
            return np.linalg.lstsq(concepts, bias, rcond=None)[0].astype(np.float32)
        return np.zeros(bundle.embed_dim, np.float32)
    return bundle.text_memo(("image_mean",), make)


def thing_scores(bundle: ModelBundle, tiers: dict[str, np.ndarray]) -> np.ndarray:
    """(N, T) each tile's evidence for each thing: the cosine of the tile's own global token with the
    thing's embedding, less the thing's cosine with the mean training image.

    Without that subtraction "hub" texts (bridge, harbor) that sit close to every image would be
    seen everywhere. The region and object tokens are not used: their best match over a tile's many
    tokens picks such hubs for every tile (measured on the demo scene), while the global token ranks
    what is there (the demo's forest first and its road second on the tiles the road crosses)."""
    _, emb = thing_embeddings(bundle)
    return np.asarray(tiers["embedding"], np.float32) @ emb.T - emb @ image_mean(bundle)


def seen_things(bundle: ModelBundle, tiers: dict[str, np.ndarray], top_k: int | None = None) -> np.ndarray:
    """(N, T) bool: whether each thing is among the tile's ``top_k`` best-evidenced things."""
    k = top_k_of(bundle) if top_k is None else top_k
    scores = thing_scores(bundle, tiers)
    seen = np.zeros(scores.shape, bool)
    k = min(max(0, k), scores.shape[1])
    if k:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        np.put_along_axis(seen, top, True, axis=1)
    return seen


def banned_tokens(bundle: ModelBundle, tiers: dict[str, np.ndarray], top_k: int | None = None) -> np.ndarray | None:
    """(N, vocab) bool: the decoder tokens each tile's caption may not use (None when grounding is off)."""
    k = top_k_of(bundle) if top_k is None else top_k
    if k <= 0 or not bundle.has_decoder:
        return None
    vocab = {w: i for i, w in enumerate(bundle.vocab)}
    groups = lexicon()
    seen = seen_things(bundle, tiers, k)
    banned = np.zeros((len(seen), len(bundle.vocab)), bool)
    for t, words in enumerate(groups.values()):
        ids = [vocab[w] for w in words if w in vocab]
        if ids:
            banned[np.ix_(~seen[:, t], ids)] = True
    return banned


def named_things(caption: str, groups: dict[str, tuple[str, ...]] | None = None) -> set[str]:
    """The things of the lexicon that a sentence names."""
    groups = groups or lexicon()
    words = set(caption.lower().replace(".", " ").replace(",", " ").split())
    return {name for name, forms in groups.items() if words & set(forms)}


def grounded_captions(bundle: ModelBundle, tiers: dict[str, np.ndarray], progress=None,
                      top_k: int | None = None) -> list[str]:
    """Captions of the tiles (as :meth:`ModelBundle.caption`), each naming only what the tile sees."""
    return bundle.caption(tiers, progress=progress, banned=banned_tokens(bundle, tiers, top_k))
