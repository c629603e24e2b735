"""Knowledge at query time: a query's parts from the knowledge base, scored together.

A query or class name that names knowledge-base concepts ("storage tanks next to a river") is
scored as several texts, its parts: the text itself; the text with each named concept replaced
by each of the concept's other names ("oil depot next to a river"); and, when the text is the
concept alone ("forest", "an aerial image of a forest"), the concept's description and its
sub-concepts ("dense conifer trees", "a forest clearing", ...).  An embedding's score for the
text combines its cosine similarities ``cos_j`` with the parts by a weighted log-mean-exp, in
which the text itself weighs ``base_weight`` and every other part 1:

    s = (1 / beta) * log( sum_j w_j exp(beta * cos_j) / sum_j w_j )

A large ``beta`` tends to the best part, a small one to the weighted mean.  A text that names no
concept has one part, and its score is its plain cosine similarity.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from .errors import RsVlmError
from .knowledge import Concept
from .qa import QueryScorer

if TYPE_CHECKING:
    from .bundle import ModelBundle

MANIFEST_KEY = "query_knowledge"
MAX_PARTS = 12
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?", re.IGNORECASE)
_ARTICLES = frozenset({"a", "an", "the", "some", "any"})
_LEADING_ARTICLE = re.compile(r"^(?:a|an|the|some|any)\s+", re.IGNORECASE)
_ARTICLE_BEFORE = re.compile(r"\b(an?)\s+$", re.IGNORECASE)
# Words that leave a text "the concept alone": "an aerial image of a forest area" is "forest".
_FILLER = _ARTICLES | {"of", "in", "area", "areas", "image", "images", "photo", "picture", "view", "scene",
                       "aerial", "satellite", "remote", "sensing", "there", "is", "are", "this", "here"}
# One-word synonyms whose everyday sense is not the concept's: "green fields" are not golf greens.
_AMBIGUOUS = frozenset({"green", "structure", "span", "mole", "stable", "coach", "strand", "track"})


@dataclass(frozen=True)
class QueryKnowledge:
    """How a text's parts are combined (the bundle manifest's ``"query_knowledge"``).

    Attributes:
        beta: Temperature of the log-mean-exp over a text's parts (large: the best part; small:
            the weighted mean).
        base_weight: Weight of the text itself relative to each other part.
        enabled: False scores every text alone, by its plain cosine similarity.
    """

    # Calibrated on UCM val at training time (beta 5-40 x base weight 1-8): both version-3 runs chose 5 and 8.
    beta: float = 5.0
    base_weight: float = 8.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not (self.beta > 0 and self.base_weight > 0):
            raise ValueError(f"beta and base_weight must be positive, got {self.beta} and {self.base_weight}")

    @classmethod
    def from_manifest(cls, manifest: dict) -> "QueryKnowledge":
        """The manifest's settings, or the defaults where it has none.

        Raises:
            RsVlmError: The manifest's values are not positive numbers (and a boolean).
        """
        spec = manifest.get(MANIFEST_KEY) or {}
        try:
            return cls(float(spec.get("beta", cls.beta)), float(spec.get("base_weight", cls.base_weight)),
                       bool(spec.get("enabled", cls.enabled)))
        except (AttributeError, TypeError, ValueError) as exc:
            raise RsVlmError(f"The model manifest's \"{MANIFEST_KEY}\" is not valid ({exc}); give positive numbers "
                             "for beta and base_weight, or export the model again.") from exc


# Matching concepts in a text ---------------------------------------------------------------

def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _inflections(word: str) -> set[str]:
    """The word with its simple plural and singular forms (tank/tanks, city/cities, beach/beaches)."""
    out = {word}
    if len(word) < 3 or not word.isalpha():
        return out
    if word.endswith("y") and word[-2] not in "aeiou":
        out.add(word[:-1] + "ies")
    elif word.endswith(("s", "x", "z", "ch", "sh")):
        out.add(word + "es")
    else:
        out.add(word + "s")
    if word.endswith("ies") and len(word) > 4:
        out.add(word[:-3] + "y")
    if word.endswith(("ses", "xes", "zes", "ches", "shes")):
        out.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        out.add(word[:-1])
    return out


def _concept_forms(concept: Concept) -> list[tuple[int, str]]:
    """(kind, text) of the ways a concept is named: 0 name, 1 phrase, 2 synonym, 3 id ("industrial_area")."""
    return [(0, concept.name), (1, concept.phrase), *((2, s) for s in concept.synonyms), (3, concept.id)]


@lru_cache(maxsize=8)
def _form_table(concepts: tuple[Concept, ...]) -> tuple[dict[tuple[str, ...], dict[int, tuple[int, int]]], int]:
    """Word sequences naming concepts -> {concept index: rank}, and the longest sequence's length.

    A rank is (0 as written / 1 inflected, kind of form): the lower, the better the concept is named.
    """
    table: dict[tuple[str, ...], dict[int, tuple[int, int]]] = {}
    for index, concept in enumerate(concepts):
        for kind, form in _concept_forms(concept):
            words = _words(form)
            while words and words[0] in _ARTICLES:  # the phrase "a forest" names "forest"
                words = words[1:]
            if not words or (len(words) == 1 and words[0] in _AMBIGUOUS):
                continue
            # Ids are matched only as written ("storagetanks"): "trees" is not the id "tree" (an individual tree).
            for last in (_inflections(words[-1]) if kind != 3 else {words[-1]}):
                key = (*words[:-1], last)
                rank = (int(last != words[-1]), kind)
                found = table.setdefault(key, {})
                found[index] = min(found.get(index, rank), rank)
    return table, max((len(k) for k in table), default=0)


def match_concepts(kb_concepts: Sequence[Concept], text: str) -> list[tuple[Concept, int, int]]:
    """The knowledge-base concepts named in a free text, with the character span naming each.

    A concept is named by its name, phrase or a synonym, matched case-insensitively on whole
    words, with simple plural or singular forms ("storage tank" names "storage tanks") and any
    punctuation between words ("industrial_area" is "industrial area"), or by its id as written
    (class folders such as "storagetanks").  Longer matches win
    and matches do not overlap; a span naming several concepts ("storage tanks": the object and
    the scene) gives one match each, the best named first (as written before inflected, name
    before phrase, synonym and id, then knowledge-base order).

    Returns:
        (concept, start, end) in text order: ``text[start:end]`` names the concept.
    """
    concepts = tuple(kb_concepts)
    table, longest = _form_table(concepts)
    tokens = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    words = [w for w, _, _ in tokens]
    candidates = [(i, j) for i in range(len(words)) for j in range(i + 1, min(len(words), i + longest) + 1)
                  if tuple(words[i:j]) in table]
    taken = [False] * len(words)
    chosen = []
    for i, j in sorted(candidates, key=lambda c: (c[0] - c[1], c[0])):  # longest first, then leftmost
        if not any(taken[i:j]):
            taken[i:j] = [True] * (j - i)
            chosen.append((i, j))
    out = []
    for i, j in sorted(chosen):
        found = table[tuple(words[i:j])]
        out += [(concepts[k], tokens[i][1], tokens[j - 1][2]) for k in sorted(found, key=lambda k: (found[k], k))]
    return out


# Expanding a text into parts ---------------------------------------------------------------

def _plain(text: str) -> str:
    """A text for comparisons: lower case, single spaces, no leading article."""
    return _LEADING_ARTICLE.sub("", " ".join(text.lower().split()))


def _replace(text: str, start: int, end: int, other: str) -> str:
    """``text`` with ``text[start:end]`` replaced by ``other``, keeping a preceding "a"/"an" right."""
    head, tail = text[:start], text[end:]
    article = _ARTICLE_BEFORE.search(head)
    if article:
        if _LEADING_ARTICLE.match(other):  # "find a harbor" -> "find a harbor with moored boats"
            head = head[:article.start()]
        else:
            word = "an" if other[:1].lower() in "aeiou" else "a"
            head = head[:article.start()] + (word.capitalize() if article.group(1)[0].isupper() else word) + " "
    return head + other + tail


def _alone(text: str, start: int, end: int) -> bool:
    """Whether the text is the span alone, up to articles and words like "area" or "image of"."""
    return all(w in _FILLER for w in _words(text[:start] + " " + text[end:]))


def expand_text(kb_concepts: Sequence[Concept], text: str, max_parts: int = MAX_PARTS) -> list[str]:
    """The parts a text is scored by: the text itself, then what the knowledge base knows of it.

    After the text come, for each concept it names (see :func:`match_concepts`), the text with
    the concept's span replaced by each of its other names (name, phrase, synonyms); then, when
    the text is that concept alone, each named concept's description and the phrases of its
    sub-concepts (those whose ``parent`` is its id), in knowledge-base order.

    Args:
        kb_concepts: The knowledge base's concepts.
        text: A query or class name.
        max_parts: At most this many parts are returned (the text included).

    Returns:
        De-duplicated parts (case and articles aside), the text first.
    """
    concepts = list(kb_concepts)
    matches = match_concepts(concepts, text)

    def parts() -> Iterator[str]:
        yield text
        for concept, start, end in matches:
            surface = _plain(text[start:end])
            yield from (_replace(text, start, end, other) for other in (concept.name, concept.phrase, *concept.synonyms)
                        if _plain(other) != surface)
        spans = {(start, end) for _, start, end in matches}
        if len(spans) == 1 and _alone(text, *spans.pop()):
            named = [c for c, _, _ in matches]
            # The knowledge base's own embeddings were made from "{name}: {description}" (modeling/export.py).
            yield from (f"{c.name}: {c.description}" for c in named if c.description)
            yield from (child.phrase for c in named for child in concepts if child.parent == c.id)

    # Made one by one until there are enough: a long text names concepts thousands of times, and
    # each part is a copy of it (a 100 kB query took 30 s to expand into parts it then dropped).
    unique: dict[str, str] = {}
    for part in parts():
        unique.setdefault(_plain(part), part)
        if len(unique) >= max(1, max_parts):
            break
    return list(unique.values())


# Scoring -----------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ExpandedQueries:
    """Texts with their parts' embeddings, scoring embeddings by a log-mean-exp over the parts.

    Attributes:
        parts: Every text's parts, text by text, each text's own part first.
        owners: (P,) the text of each part, 0, 0, ..., 1, 1, ... (non-decreasing, from 0).
        embeddings: (P, D) the parts' normalised embeddings.
        settings: ``beta`` and ``base_weight`` of the combination.
    """

    parts: tuple[str, ...]
    owners: np.ndarray
    embeddings: np.ndarray
    settings: QueryKnowledge = field(default_factory=QueryKnowledge)

    def __post_init__(self) -> None:
        n = len(self.parts)
        if len(self.owners) != n or len(self.embeddings) != n:
            raise ValueError(f"{n} parts but {len(self.owners)} owners and {len(self.embeddings)} embeddings")
        if n and (self.owners[0] != 0 or not np.isin(np.diff(self.owners), (0, 1)).all()):
            raise ValueError("owners must number the texts 0, 1, ... in order, each text's parts together")

    @classmethod
    def from_embeddings(cls, parts: Sequence[str], owners: Sequence[int] | np.ndarray, embeddings: np.ndarray,
                        beta: float = QueryKnowledge.beta,
                        base_weight: float = QueryKnowledge.base_weight) -> "ExpandedQueries":
        """Queries from precomputed part embeddings (no model needed).

        Args:
            parts: The parts, text by text, each text's own part first.
            owners: The text index of each part (0, 0, 1, ...).
            embeddings: (P, D) normalised part embeddings.
            beta: Temperature of the log-mean-exp.
            base_weight: Weight of each text's own part relative to its other parts.
        """
        return cls(tuple(parts), np.asarray(owners, np.intp), np.asarray(embeddings),
                   QueryKnowledge(float(beta), float(base_weight)))

    @property
    def _starts(self) -> np.ndarray:
        """Index of each text's first part."""
        return np.flatnonzero(np.r_[True, np.diff(self.owners) != 0]) if len(self.owners) else np.zeros(0, np.intp)

    @property
    def texts(self) -> list[str]:
        """The texts (each text's own part)."""
        return [self.parts[i] for i in self._starts]

    def expansions(self, index: int) -> list[str]:
        """The parts of text ``index`` after the text itself."""
        return [p for p, owner in zip(self.parts, self.owners) if owner == index][1:]

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Scores of embeddings for every text: the weighted log-mean-exp of their part cosines.

        Args:
            embeddings: (N, D) normalised embeddings (any leading shape (..., D) works).

        Returns:
            (N, T) scores (``(..., T)``), in the embeddings' floating type; a text with one part
            scores its plain cosine similarity.
        """
        embeddings = np.asarray(embeddings)
        lead, starts = embeddings.shape[:-1], self._starts
        cos = embeddings.reshape(-1, embeddings.shape[-1]) @ self.embeddings.T  # (M, P)
        if not len(starts) or not len(cos):
            return np.zeros((*lead, len(starts)), cos.dtype)
        weights = np.ones(len(self.parts), cos.dtype)
        weights[starts] = self.settings.base_weight
        best = np.maximum.reduceat(cos, starts, axis=1)  # shifts exp() to at most 1
        beta = cos.dtype.type(self.settings.beta)
        mass = np.add.reduceat(weights * np.exp(beta * (cos - best[:, self.owners])), starts, axis=1)
        out = best + np.log(mass / np.add.reduceat(weights, starts)) / beta
        return out.reshape(*lead, len(starts))

    def scorer(self, index: int = 0) -> QueryScorer:
        """The score of one text as a function of embeddings (..., D) -> (...) (see :func:`qa.presence_scores`)."""
        rows = self.owners == index
        one = ExpandedQueries(tuple(p for p, r in zip(self.parts, rows) if r), np.zeros(int(rows.sum()), np.intp),
                              self.embeddings[rows], self.settings)
        return lambda embeddings: one.scores(embeddings)[..., 0]


def prompt_ensemble(bundle: "ModelBundle", texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """(len(texts), D) normalised mean embeddings of each text through prompt templates ("an aerial image of {}.")."""
    emb = bundle.encode_texts([p.format(t) for t in texts for p in prompts])
    emb = emb.reshape(len(texts), len(prompts), -1).mean(1)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def expand_queries(bundle: "ModelBundle", texts: Sequence[str], prompts: Sequence[str] | None = None,
                   knowledge: bool = True, max_parts: int = MAX_PARTS) -> ExpandedQueries:
    """Expand texts with the bundle's knowledge base and embed all their parts in one go.

    Args:
        bundle: The model; its manifest's ``"query_knowledge"`` sets beta, base_weight and enabled.
        texts: Class names or queries.
        prompts: Templates each part goes through, averaged (as :func:`jobs.classify.class_embeddings`);
            None embeds the parts as they are.
        knowledge: False (or a manifest with ``enabled: false``, or a bundle without a knowledge
            base) scores every text alone, exactly as its plain (prompt-ensemble) embedding.
        max_parts: At most this many parts per text.
    """
    settings = QueryKnowledge.from_manifest(bundle.manifest)
    use = knowledge and settings.enabled and "knowledge_base" in bundle.manifest

    def make() -> ExpandedQueries:
        concepts = bundle.knowledge_base.concepts if use else []
        split = [expand_text(concepts, text, max_parts) for text in texts]
        parts = [p for text_parts in split for p in text_parts]
        owners = [k for k, text_parts in enumerate(split) for _ in text_parts]
        emb = prompt_ensemble(bundle, parts, prompts) if prompts else bundle.encode_texts(parts)
        return ExpandedQueries(tuple(parts), np.asarray(owners, np.intp), emb, settings)

    # The same class list is scored again on every run of a session (the default list has 1,900 part texts).
    return bundle.text_memo(("expand", tuple(texts), tuple(prompts or ()), use, max_parts), make)


def describe_expansions(queries: ExpandedQueries, index: int, verb: str = "scored", limit: int = 4) -> str:
    """A line for the user on how text ``index`` was expanded, or "" when it was not.

    For example ``"storage tanks" also searched as: oil tank; fuel tank; ... (and 3 more).``
    """
    also = queries.expansions(index)
    if not also:
        return ""
    shown = "; ".join(p if len(p) <= 60 else p[:57].rstrip() + "..." for p in also[:limit])
    more = f" (and {len(also) - limit} more)" if len(also) > limit else ""
    return f"\"{queries.texts[index]}\" also {verb} as: {shown}{more}."
