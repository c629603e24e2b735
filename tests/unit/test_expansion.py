"""Knowledge at query time (core/expansion.py): matching, expansion and the log-mean-exp scorer, on
the shipped knowledge base, without a model (tests/model/test_query_knowledge.py runs the real one)."""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from rs_vlm_plugin.core.bundle import ModelBundle
from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.expansion import (MANIFEST_KEY, ExpandedQueries, QueryKnowledge, describe_expansions,
                                          expand_queries, expand_text, match_concepts)
from rs_vlm_plugin.core.knowledge import KnowledgeBase
from rs_vlm_plugin.core.jobs.classify import CLASS_PROMPTS, class_embeddings
from rs_vlm_plugin.core.qa import presence_scores

KB_PATH = Path(__file__).resolve().parents[2] / "rs_vlm_plugin/resources/knowledge_base.json"
CONCEPTS = KnowledgeBase.read_concepts(KB_PATH)
BY_ID = {c.id: c for c in CONCEPTS}


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# Matching --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    # plural of the object's name and the scene's name as written: both concepts, the exact name first
    ("storage tanks next to a river", [("storagetanks", "storage tanks"), ("storage_tank", "storage tanks"),
                                       ("river", "river")]),
    ("a Storage Tank", [("storage_tank", "Storage Tank"), ("storagetanks", "Storage Tank")]),
    ("beaches", [("beach", "beaches")]),
    ("cemeteries", [("cemetery", "cemeteries")]),
    ("city buses", [("bus", "city buses")]),
    ("industrial_area", [("industrial_area", "industrial_area")]),  # a class folder's name
    ("denseresidential", [("denseresidential", "denseresidential")]),  # an id as written
    ("clear-cut forest", [("clear_cut", "clear-cut"), ("forest", "forest")]),
    # longest match wins: not "parking lot" (the scene) nor "residential area"
    ("a parking lot area", [("parking_area", "parking lot area")]),
    ("Dense residential area near a lake", [("denseresidential", "Dense residential area"), ("lake", "lake")]),
    # no match: unknown words, an ambiguous one-word synonym ("green"), an id only as written ("tree")
    ("qwerty", []),
    ("green fields", []),
    ("trees", []),
    ("", []),
])
def test_concepts_named_in_a_text(text, expected):
    found = match_concepts(CONCEPTS, text)
    assert [(c.id, text[start:end]) for c, start, end in found] == expected
    assert match_concepts(CONCEPTS, text) == found  # deterministic


def test_matches_do_not_overlap():
    spans = sorted({(s, e) for _, s, e in match_concepts(CONCEPTS, "storage tanks and a parking lot area by a lake")})
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))


# Expansion -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("storage tanks next to a river", [
        "storage tanks next to a river",
        "tank farm next to a river", "oil depot next to a river", "fuel storage facility next to a river",
        "storage tank next to a river", "oil tank next to a river", "fuel tank next to a river",
        "cylindrical tank next to a river",
        "storage tanks next to a river channel", "storage tanks next to a waterway",
        "storage tanks next to a watercourse",
    ]),
    # the article follows the replacement; a phrase with its own article replaces the text's
    ("find a harbor", ["find a harbor", "find a harbor with moored boats", "find a marina", "find a boat harbor",
                       "find a yacht harbor"]),
    ("a paved road", ["a paved road", "an asphalt road", "a two-lane road", "a highway lane",
                      "paved road: " + BY_ID["paved_road"].description]),
    ("qwerty", ["qwerty"]),
])
def test_expanded_parts_and_their_order(text, expected):
    assert expand_text(CONCEPTS, text) == expected


@pytest.mark.parametrize("text", ["forest", "an aerial image of a forest area"])
def test_a_concept_alone_brings_its_description_and_sub_concepts(text):
    forest = BY_ID["forest"]
    parts = expand_text(CONCEPTS, text)
    children = [c.phrase for c in CONCEPTS if c.parent == "forest"]
    assert parts[0] == text and len(parts) == 12  # the cap
    assert all(any(s in part for part in parts[1:]) for s in forest.synonyms)
    description = parts.index(f"forest: {forest.description}")
    assert parts[description + 1:] == children[:len(parts) - description - 1]  # knowledge-base order


def test_a_concept_among_other_words_keeps_the_composition():
    parts = expand_text(CONCEPTS, "dense forest near a lake")
    assert "dense woodland near a lake" in parts and "dense forest near a freshwater lake" in parts
    assert not any(p.startswith("forest:") for p in parts)  # not the concept alone: no description


@pytest.mark.parametrize("max_parts", [1, 3, 5])
def test_parts_are_capped_and_unique(max_parts):
    full = expand_text(CONCEPTS, "storage tanks next to a river")
    assert expand_text(CONCEPTS, "storage tanks next to a river", max_parts) == full[:max_parts]
    for text in ("Storage Tanks", "airplane", "tennis court", "buildings", "industrial_area"):
        parts = expand_text(CONCEPTS, text)
        assert parts[0] == text and 1 < len(parts) <= 12
        assert len({p.lower() for p in parts}) == len(parts)


# Scoring ---------------------------------------------------------------------------------------

def _direct(cos: np.ndarray, owners: np.ndarray, beta: float, base_weight: float) -> np.ndarray:
    """The weighted log-mean-exp written out, text by text."""
    out = []
    for t in range(owners.max() + 1):
        c = cos[:, owners == t]
        w = np.ones(c.shape[1])
        w[0] = base_weight
        out.append(np.log((w * np.exp(beta * c)).sum(1) / w.sum()) / beta)
    return np.stack(out, 1)


@pytest.mark.parametrize("beta, base_weight", [(20.0, 2.0), (5.0, 1.0), (50.0, 3.0), (0.5, 2.0)])
def test_scores_are_the_weighted_log_mean_exp(beta, base_weight):
    rng = np.random.default_rng(0)
    owners = np.array([0, 0, 0, 0, 0, 1, 2, 2, 2])
    parts, emb = [f"part {k}" for k in range(len(owners))], _unit(rng, len(owners), 16)
    x = _unit(rng, 7, 16)
    queries = ExpandedQueries.from_embeddings(parts, owners, emb, beta, base_weight)
    scores = queries.scores(x)
    assert scores.shape == (7, 3)
    np.testing.assert_allclose(scores, _direct(x @ emb.T, owners, beta, base_weight), rtol=1e-10, atol=1e-12)
    assert queries.texts == ["part 0", "part 5", "part 6"] and queries.expansions(2) == ["part 7", "part 8"]


def test_large_beta_tends_to_the_best_part_small_to_the_weighted_mean():
    rng = np.random.default_rng(1)
    owners = np.zeros(6, int)
    emb, x = _unit(rng, 6, 8), _unit(rng, 5, 8)
    cos = x @ emb.T
    sharp = ExpandedQueries.from_embeddings(list("abcdef"), owners, emb, beta=1e4, base_weight=2.0).scores(x)[:, 0]
    assert np.all(sharp <= cos.max(1) + 1e-12)
    np.testing.assert_allclose(sharp, cos.max(1), atol=np.log(7.0) / 1e4)
    flat = ExpandedQueries.from_embeddings(list("abcdef"), owners, emb, beta=1e-6, base_weight=2.0).scores(x)[:, 0]
    weights = np.array([2.0, 1, 1, 1, 1, 1])
    np.testing.assert_allclose(flat, cos @ weights / weights.sum(), atol=1e-5)


def test_a_text_with_one_part_scores_its_plain_cosine_exactly():
    rng = np.random.default_rng(2)
    emb, x = _unit(rng, 3, 8).astype(np.float32), _unit(rng, 10, 8).astype(np.float32)
    scores = ExpandedQueries.from_embeddings(["a", "b", "c"], [0, 1, 2], emb).scores(x)
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, x @ emb.T)


@pytest.mark.parametrize("owners", [[1, 1], [0, 2], [0, 1, 0]])
def test_parts_must_be_grouped_by_text_in_order(owners):
    with pytest.raises(ValueError, match="owners"):
        ExpandedQueries.from_embeddings(["p"] * len(owners), owners, np.eye(len(owners)))


def test_a_scorer_scores_token_stacks_and_drives_presence_scores():
    rng = np.random.default_rng(3)
    owners = np.array([0, 1, 1, 1])
    queries = ExpandedQueries.from_embeddings(list("abcd"), owners, _unit(rng, 4, 8))
    g, r, alternatives = _unit(rng, 5, 8), _unit(rng, 5, 13, 8), _unit(rng, 6, 8)
    tokens = np.concatenate([g[:, None], r], axis=1)
    scorer = queries.scorer(1)
    np.testing.assert_allclose(scorer(tokens), queries.scores(tokens.reshape(-1, 8))[:, 1].reshape(5, 14))
    np.testing.assert_allclose(presence_scores(g, r, scorer), scorer(tokens).max(1), rtol=1e-6)
    # A one-part text through the scorer is the plain query vector, with alternatives too.
    vector = queries.embeddings[0]
    for alt in (None, alternatives):
        np.testing.assert_allclose(presence_scores(g, r, queries.scorer(0), alt, 20.0),
                                   presence_scores(g, r, vector, alt, 20.0), rtol=1e-6)


@pytest.mark.parametrize("manifest, expected", [
    ({}, QueryKnowledge(5.0, 8.0, True)),
    ({MANIFEST_KEY: {"beta": 5, "base_weight": 1.5}}, QueryKnowledge(5.0, 1.5, True)),
    ({MANIFEST_KEY: {"enabled": False}}, QueryKnowledge(5.0, 8.0, False)),
])
def test_settings_come_from_the_manifest(manifest, expected):
    assert QueryKnowledge.from_manifest(manifest) == expected


@pytest.mark.parametrize("spec", [{"beta": 0}, {"base_weight": -1.0}, {"beta": "sharp"}, ["beta"]])
def test_bad_manifest_settings_are_a_sentence(spec):
    with pytest.raises(RsVlmError, match="query_knowledge.*export the model again"):
        QueryKnowledge.from_manifest({MANIFEST_KEY: spec})


# expand_queries without a model: a text tower that hashes each text to a seeded unit vector ---------

class HashedTextTower:
    """The bundle's text side only: ``encode_texts``, ``manifest`` and the knowledge base's concepts."""

    def __init__(self, manifest: dict | None = None) -> None:
        self.manifest = {"knowledge_base": {"file": "knowledge_base.json"}, **(manifest or {})}
        self.knowledge_base = SimpleNamespace(concepts=CONCEPTS)
        self.calls: list[list[str]] = []
        self._text_memo: dict = {}

    text_memo = ModelBundle.text_memo  # the bundle's own memo of text-side results

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([_unit(np.random.default_rng(zlib.crc32(t.encode())), 16) for t in texts]).astype(np.float32)


CLASSES = ["forest", "storage tanks", "qwerty"]


def test_all_parts_of_all_texts_are_embedded_in_one_call_through_the_prompts():
    tower = HashedTextTower()
    queries = expand_queries(tower, CLASSES, CLASS_PROMPTS)
    parts = [expand_text(CONCEPTS, c) for c in CLASSES]
    assert list(queries.parts) == [p for ps in parts for p in ps] and queries.texts == CLASSES
    assert tower.calls == [[p.format(part) for part in queries.parts for p in CLASS_PROMPTS]]
    again = expand_queries(tower, CLASSES, CLASS_PROMPTS)  # a second run of the same class list encodes nothing
    assert again is queries and len(tower.calls) == 1
    assert expand_queries(tower, CLASSES, CLASS_PROMPTS, knowledge=False) is not queries and len(tower.calls) == 2
    np.testing.assert_allclose(np.linalg.norm(queries.embeddings, axis=1), 1.0, rtol=1e-6)
    assert queries.expansions(2) == []
    assert describe_expansions(queries, 2) == ""
    note = describe_expansions(queries, 1, "searched")
    assert note.startswith('"storage tanks" also searched as: tank farm; oil depot;') and note.endswith("more).")


@pytest.mark.parametrize("tower, knowledge", [
    (HashedTextTower(), False),
    (HashedTextTower({MANIFEST_KEY: {"enabled": False}}), True),
])
def test_without_knowledge_the_scores_are_the_plain_prompt_ensemble_cosines(tower, knowledge):
    queries = expand_queries(tower, CLASSES, CLASS_PROMPTS, knowledge=knowledge)
    assert list(queries.parts) == CLASSES
    x = _unit(np.random.default_rng(4), 9, 16).astype(np.float32)
    np.testing.assert_array_equal(queries.scores(x), x @ class_embeddings(HashedTextTower(), CLASSES).T)


def test_with_knowledge_named_classes_score_differently():
    x = _unit(np.random.default_rng(5), 9, 16).astype(np.float32)
    on = expand_queries(HashedTextTower(), CLASSES, CLASS_PROMPTS).scores(x)
    off = expand_queries(HashedTextTower(), CLASSES, CLASS_PROMPTS, knowledge=False).scores(x)
    assert not np.allclose(on[:, :2], off[:, :2])
    np.testing.assert_array_equal(on[:, 2], off[:, 2])  # "qwerty" names nothing
