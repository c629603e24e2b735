"""Questions a map user asks about an area, and the scores behind the answers.

Four kinds of question are understood:

- presence: "is there a storage tank?", "are there boats here?", "any airplanes?" -> yes / no,
  the best tile's presence score (see :func:`presence_scores`) against a threshold calibrated
  on val at training time;
- scene: "what is this area?", "what is here?", "what kind of place is this?" -> the best scene
  concepts of the whole view;
- where: "where is the river?", "where are the tennis courts?", "find parking lots" -> the
  best regions;
- share: "how much of the area is forest?", "what share is farmland?", "what percentage is
  water?" -> the share of the fine tiles (by area) whose presence score passes the threshold.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import RsVlmError

KINDS = ("presence", "scene", "where", "share")
_PATTERNS = (
    ("share", r"^(?:how much|what (?:share|fraction|percentage|proportion|part)|which (?:share|fraction|percentage))"
              r"(?: of)?(?: (?:the|this) (?:area|image|view|extent|map|scene|layer))?(?: (?:is|are)(?: covered by| made of| made up of)?)?\s+(.+)$"),
    ("scene", r"^(?:what (?:is|kind of (?:place|area|scene) is|type of (?:place|area|scene) is|does) "
              r"(?:this|here|that|the (?:area|image|view|scene))(?: area| place| image| scene| show| look like)?|"
              r"what(?:'s| is) here|describe (?:this|the) (?:area|scene|image|view))$"),
    ("presence", r"^(?:is there|are there|is there any|are there any|do you see|can you see|does (?:it|this area|the area) "
                 r"(?:have|contain)|any)\s+(.+?)(?:\s+(?:here|in (?:this|the) (?:area|image|view|scene)))?$"),
    ("where", r"^(?:where (?:is|are|can i find|do i find)|find|show(?: me)?|locate|search for)\s+(.+?)"
              r"(?:\s+(?:here|in (?:this|the) (?:area|image|view|scene)))?$"),
)
_ARTICLES = re.compile(r"^(?:the|a|an|any|some)\s+")


@dataclass(frozen=True)
class Question:
    """A parsed question: its kind and what it is about (empty for scene questions)."""

    text: str
    kind: str
    subject: str


def parse_question(text: str) -> Question:
    """Recognise the kind of question and its subject.

    Raises:
        RsVlmError: The question is empty or none of the four kinds.
    """
    raw = (text or "").strip()
    clean = re.sub(r"\s+", " ", raw.lower()).strip(" ?.!")
    if not clean:
        raise RsVlmError("The question is empty; ask for example \"is there a storage tank?\".")
    for kind, pattern in _PATTERNS:
        match = re.match(pattern, clean)
        if match:
            subject = match.group(1).strip() if match.groups() and match.group(1) else ""
            subject = _ARTICLES.sub("", subject)
            if kind != "scene" and not subject:
                break
            return Question(raw, kind, subject)
    raise RsVlmError(
        f"I do not understand \"{raw}\". Ask \"is there X?\", \"what is this area?\", \"where is X?\" "
        "or \"how much of the area is X?\".")


# The prompt templates whose mean embedding stands for a question's subject.
SUBJECT_PROMPTS = ("an aerial image of {}.", "there is {} in the image.", "{}")

# Scores of embeddings (..., D) for one query -> (...): a plain query vector's cosine similarity,
# or a combination over the query's parts (see expansion.ExpandedQueries.scorer).
QueryScorer = Callable[[np.ndarray], np.ndarray]


def subject_prompts(subject: str) -> list[str]:
    """The prompt ensemble that stands for a question's subject."""
    return [p.format(subject) for p in SUBJECT_PROMPTS]


def as_scorer(query: np.ndarray | QueryScorer) -> QueryScorer:
    """A query as a scorer: a (D,) vector scores embeddings by their dot product with it."""
    if callable(query):
        return query
    vector = np.asarray(query)
    return lambda embeddings: embeddings @ vector


# Knowledge-base concepts at least this close to the query stand with it ("forest" with "conifer
# stand", "mixed forest stand", ...); the others are its alternatives.
FAMILY_COSINE = 0.7


def presence_scores(global_tok: np.ndarray, regions: np.ndarray, query: np.ndarray | QueryScorer,
                    alternatives: np.ndarray | None = None, logit_scale: float = 20.0) -> np.ndarray:
    """Per-tile presence score of a normalised query over the tile's global token and its 13
    region tokens; a tile's score is its best token's.

    Without ``alternatives`` a token's score is its cosine similarity with the query (or the
    query scorer's score).  With them (the knowledge base's concept embeddings) it is a
    probability: a softmax over the query and every concept, where the query's side is the query
    plus the concepts of its family (score for the query at least ``FAMILY_COSINE``).  The
    query's family must explain the token better than anything else the model knows.

    Object tokens are left out: they were aligned with the ten VHR-10 object classes only and,
    out of that domain, sit close to every object name (a forest's cells score 0.5 for
    "airplane"), so they would answer "yes" to any object question.  They still feed the
    caption decoder and the text-to-box evaluation.

    Args:
        global_tok: (N, D); regions: (N, R, D).
        query: (D,) normalised text embedding, or a scorer of embeddings (..., D) -> (...) such
            as :meth:`expansion.ExpandedQueries.scorer`, which scores the (N, 1 + R, D) tokens.
        alternatives: (K, D) normalised concept embeddings, or None for raw cosine scores.
        logit_scale: The model's temperature (cosine x scale = logit).
    """
    if len(global_tok) == 0:
        return np.zeros(0, np.float32)
    score = as_scorer(query)
    tokens = np.concatenate([global_tok[:, None], regions], axis=1)  # (N, 1 + R, D)
    sims = score(tokens)
    if alternatives is None:
        return sims.max(1).astype(np.float32)
    family = score(alternatives) >= FAMILY_COSINE
    logits = logit_scale * np.concatenate([sims[..., None], tokens @ alternatives.T], axis=-1)
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    mine = probs[..., 0] + probs[..., 1:][..., family].sum(-1)
    return (mine / probs.sum(-1)).max(1).astype(np.float32)


def pool_objects(objects: np.ndarray, grid: int) -> np.ndarray:
    """(N, G*G, D) object tokens averaged over 2x2 cells -> (N, (G/2)^2, D) (not renormalised)."""
    n, _, d = objects.shape
    return objects.reshape(n, grid // 2, 2, grid // 2, 2, d).mean((2, 4)).reshape(n, (grid // 2) ** 2, d)


def calibrate_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises balanced accuracy, and that accuracy.

    Args:
        scores: Presence scores of (image, query) pairs.
        positive: Whether the queried thing is really in the image.
    """
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        raise ValueError("calibration needs both positive and negative pairs")
    candidates = np.unique(scores)
    best_t, best_acc = float(candidates[0]), -1.0
    for t in (candidates[:-1] + candidates[1:]) / 2:
        yes = scores >= t
        acc = 0.5 * (yes[positive].mean() + (~yes[~positive]).mean())
        if acc > best_acc:
            best_t, best_acc = float(t), float(acc)
    return best_t, best_acc
