"""Checks on the shipped remote-sensing knowledge base (resources/knowledge_base.json)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

KB_PATH = Path(__file__).resolve().parents[2] / "rs_vlm_plugin/resources/knowledge_base.json"

LEVELS = ("object", "region", "scene")
LEVEL_MINIMUMS = {"object": 80, "region": 70, "scene": 60}
REQUIRED_SCENE_IDS = (
    # UC Merced land use classes
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential",
    "forest", "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark",
    "overpass", "parkinglot", "river", "runway", "sparseresidential", "storagetanks", "tenniscourt",
    # RESISC-45 classes not already covered above
    "commercial_area", "desert", "farmland", "industrial_area", "island", "lake", "mountain",
    "residential", "wetland",
)
FIELD_TYPES = {
    "id": str,
    "name": str,
    "level": str,
    "synonyms": list,
    "description": str,
    "phrase": str,
    "typical_size_m": (int, float),
    "typical_gsd_m": (int, float),
}


@pytest.fixture(scope="module")
def kb() -> dict:
    with KB_PATH.open(encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def concepts(kb) -> list[dict]:
    return kb["concepts"]


def test_is_valid_json_with_version(kb):
    assert isinstance(kb, dict)
    assert isinstance(kb.get("version"), int) and not isinstance(kb["version"], bool)
    assert kb["version"] >= 1
    assert isinstance(kb.get("concepts"), list)
    assert list(kb.get("levels", [])) == list(LEVELS)


def test_has_enough_concepts(concepts):
    assert len(concepts) >= 220


def test_per_level_minimums(concepts):
    counts = Counter(c.get("level") for c in concepts)
    for level, minimum in LEVEL_MINIMUMS.items():
        assert counts[level] >= minimum, f"{level}: {counts[level]} < {minimum}"
    assert set(counts) <= set(LEVELS), f"unknown levels: {set(counts) - set(LEVELS)}"


def test_ids_are_unique(concepts):
    duplicates = [i for i, n in Counter(c.get("id") for c in concepts).items() if n > 1]
    assert not duplicates, duplicates


def test_required_fields_have_the_right_types(concepts):
    for c in concepts:
        for field, kind in FIELD_TYPES.items():
            assert field in c, f"{c.get('id')}: missing {field}"
            value = c[field]
            assert isinstance(value, kind) and not isinstance(value, bool), f"{c.get('id')}: {field} has type {type(value).__name__}"
        assert "parent" in c, f"{c['id']}: missing parent"
        assert c["parent"] is None or isinstance(c["parent"], str), f"{c['id']}: bad parent"
        assert c["id"].strip() and c["name"].strip() and c["phrase"].strip(), c["id"]
        assert c["synonyms"] and all(isinstance(s, str) and s.strip() for s in c["synonyms"]), c["id"]


def test_parents_exist_and_are_not_self(concepts):
    ids = {c["id"] for c in concepts}
    for c in concepts:
        parent = c["parent"]
        if parent is None:
            continue
        assert parent != c["id"], f"{c['id']} is its own parent"
        assert parent in ids, f"{c['id']}: unknown parent {parent!r}"


def test_sizes_and_gsd_are_positive(concepts):
    for c in concepts:
        assert c["typical_size_m"] > 0, c["id"]
        assert c["typical_gsd_m"] > 0, c["id"]


def test_required_scene_ids_present(concepts):
    by_id = {c["id"]: c for c in concepts}
    missing = [i for i in REQUIRED_SCENE_IDS if i not in by_id]
    assert not missing, missing
    wrong_level = [i for i in REQUIRED_SCENE_IDS if by_id[i]["level"] != "scene"]
    assert not wrong_level, wrong_level


def test_descriptions_are_short_and_non_empty(concepts):
    for c in concepts:
        words = c["description"].split()
        assert words, f"{c['id']}: empty description"
        assert len(words) < 40, f"{c['id']}: description has {len(words)} words"


def test_names_are_unique(concepts):
    duplicates = [n for n, k in Counter(c["name"].strip().lower() for c in concepts).items() if k > 1]
    assert not duplicates, duplicates
