"""Concept ranking and caption composition, on a tiny hand-made knowledge base."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rs_vlm_plugin.core.captions import compose_caption
from rs_vlm_plugin.core.knowledge import KnowledgeBase

CONCEPTS = [
    {"id": "tree", "name": "tree", "level": "object", "phrase": "trees", "description": "round crowns"},
    {"id": "road", "name": "road", "level": "object", "phrase": "a road", "description": "a grey strip"},
    {"id": "car", "name": "car", "level": "object", "phrase": "cars", "description": "small boxes"},
    {"id": "forest_patch", "name": "forest patch", "level": "region", "phrase": "a dense forest", "description": "trees"},
    {"id": "meadow", "name": "meadow", "level": "region", "phrase": "a meadow", "description": "grass"},
    {"id": "forest", "name": "forest", "level": "scene", "phrase": "a forest", "description": "forest"},
    {"id": "harbor", "name": "harbor", "level": "scene", "phrase": "a harbor", "description": "boats"},
]


@pytest.fixture()
def kb(tmp_path):
    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"version": 1, "concepts": CONCEPTS}))
    emb = np.eye(len(CONCEPTS), dtype=np.float32)
    return KnowledgeBase.load(path, _save(tmp_path, emb))


def _save(tmp_path, emb):
    np.save(tmp_path / "emb.npy", emb)
    return tmp_path / "emb.npy"


def test_rank_is_per_level_and_sums_to_one(kb):
    query = np.zeros((1, len(CONCEPTS)), np.float32)
    query[0, 1] = 0.8  # road
    query[0, 0] = 0.6  # tree
    query /= np.linalg.norm(query)
    ranked = kb.rank(query, "object", top_k=3, logit_scale=10.0)[0]
    assert [c.id for c, _ in ranked] == ["road", "tree", "car"]
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
    scene = kb.rank(query, "scene", top_k=5, logit_scale=10.0)[0]
    assert {c.level for c, _ in scene} == {"scene"} and len(scene) == 2


def test_mismatched_embeddings_are_refused(tmp_path):
    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"version": 1, "concepts": CONCEPTS}))
    with pytest.raises(ValueError):
        KnowledgeBase.load(path, _save(tmp_path, np.eye(3, dtype=np.float32)))


def _ranked(kb, ids_probs):
    by_id = {c.id: c for c in kb.concepts}
    return [(by_id[i], p) for i, p in ids_probs]


def test_captions_per_level(kb):
    scene = _ranked(kb, [("forest", 0.9), ("harbor", 0.1)])
    region = _ranked(kb, [("forest_patch", 0.7), ("meadow", 0.3)])
    objects = _ranked(kb, [("tree", 0.6), ("road", 0.3), ("car", 0.1)])
    assert compose_caption("global", scene, region, objects) == "An aerial view of a forest with a dense forest and trees."
    assert compose_caption("region", scene, region, objects) == "A dense forest with trees and a road."
    assert compose_caption("object", scene, region, objects) == "Trees and a road."


def test_weak_secondary_concepts_are_left_out(kb):
    objects = _ranked(kb, [("road", 0.9), ("car", 0.05)])
    assert compose_caption("object", [], [], objects) == "A road."


def test_bias_removes_a_hub_concept(tmp_path):
    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"version": 1, "concepts": CONCEPTS}))
    emb = np.eye(len(CONCEPTS), dtype=np.float32)
    query = np.zeros((1, len(CONCEPTS)), np.float32)
    query[0, [0, 1]] = [0.6, 0.55]  # tree slightly ahead of road
    plain = KnowledgeBase.load(path, _save(tmp_path, emb))
    assert plain.rank(query, "object", 1, 10.0)[0][0][0].id == "tree"
    bias = np.zeros(len(CONCEPTS), np.float32)
    bias[0] = 0.2  # "tree" is close to every training image
    np.save(tmp_path / "bias.npy", bias)
    debiased = KnowledgeBase.load(path, tmp_path / "emb.npy", tmp_path / "bias.npy")
    assert debiased.rank(query, "object", 1, 10.0)[0][0][0].id == "road"
