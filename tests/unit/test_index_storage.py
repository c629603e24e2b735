"""The embedding index without a model: ranking, storage round trip, file checks."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from rs_vlm_plugin.core.jobs import index as index_module
from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.gpkg import write_geopackage
from rs_vlm_plugin.core.jobs.index import EmbeddingIndex, _read_arrays, read_meta, _write_tables
from rs_vlm_plugin.core.qa import presence_scores
from rs_vlm_plugin.core.records import SearchHit


def _arrays(n: int, d: int = 8, seed: int = 0, ties: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    regions = rng.normal(size=(n, 13, d)).astype(np.float32)
    if ties:  # repeated imagery: identical tiles
        emb[n // 2:] = emb[:n - n // 2]
        regions[n // 2:] = regions[:n - n // 2]
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    regions /= np.linalg.norm(regions, axis=-1, keepdims=True)
    return {
        "embedding": emb, "regions": regions,
        "extent": np.array([[i, 0, i + 1, 1] for i in range(n)], np.float64).reshape(-1, 4),
        "depth": np.full(n, 2, np.int16), "level": np.ones(n, np.int8), "gsd_m": np.full(n, 0.5),
        "complexity": np.zeros(n, np.float32), "key": np.array([f"0.{i}" for i in range(n)], dtype=str),
    }


def _meta(n: int) -> dict:
    return {"format": index_module.INDEX_FORMAT, "format_version": index_module.INDEX_VERSION, "tiles": n,
            "source_id": "x", "model_fingerprint": "f",
            "plan_config": {"tile_size": 224, "max_tiles": 48, "max_pixels": None, "complexity_threshold": 0.12,
                            "coarse_size": 768, "uniform": False, "max_depth": 12},
            "extent": [0, 0, n, 1], "native_gsd": 0.1}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_hits", [1, 5, 40, 500])
def test_top_equals_a_full_stable_sort(ties, max_hits):
    arrays = _arrays(300, ties=ties)
    index = EmbeddingIndex(None, _meta(300), arrays)
    query = np.random.default_rng(1).normal(size=8).astype(np.float32)
    query /= np.linalg.norm(query)
    scores = index.scores(query)
    np.testing.assert_allclose(scores, presence_scores(arrays["embedding"], arrays["regions"], query), atol=1e-6)
    expected = sorted(range(300), key=lambda i: (-scores[i], i))[:max_hits]  # pipeline.search's order
    assert index.top(scores, max_hits).tolist() == expected


def test_top_with_min_score_drops_low_tiles():
    index = EmbeddingIndex(None, _meta(50), _arrays(50))
    scores = np.linspace(0, 1, 50, dtype=np.float32)
    rows = index.top(scores, 10, min_score=0.9)
    assert rows.tolist() == [49, 48, 47, 46, 45]
    assert index.top(scores, 10, min_score=2.0).tolist() == []


def test_tables_round_trip_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 7)
    path = tmp_path / "t.gpkg"
    arrays = {k: v.astype(np.float16) if k in ("embedding", "regions") else v for k, v in _arrays(30).items()}
    _write_tables(path, _meta(30), arrays)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM rsvlm_index_embeddings WHERE name = 'regions'").fetchone()[0] == 5
        back = _read_arrays(db, path)
    assert set(back) == set(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array)
    assert read_meta(path)["tiles"] == 30


def test_missing_file_is_a_sentence(tmp_path):
    with pytest.raises(RsVlmError, match="does not exist; check the path or build the index"):
        EmbeddingIndex.open(tmp_path / "nope.rsvlm-index.gpkg")


def test_other_files_are_not_an_index(tmp_path):
    text = tmp_path / "notes.gpkg"
    text.write_text("hello")
    hits = write_geopackage(tmp_path / "hits.gpkg", {"search_hits": [SearchHit("q", 1, 0.5, "object", 1,
                                                                             Extent(0, 0, 1, 1), 0.1)]}, None)
    other = tmp_path / "other.gpkg"
    _write_tables(other, {"format": "something-else", "format_version": 1}, {})
    for path in (text, hits, other):
        with pytest.raises(RsVlmError, match="is not an RS-VLM embedding index; choose a file written by"):
            EmbeddingIndex.open(path)


def test_unsupported_version_and_truncated_index_are_sentences(tmp_path):
    path = tmp_path / "v.gpkg"
    _write_tables(path, _meta(4), _arrays(4))
    assert len(EmbeddingIndex.open(path)) == 4
    with sqlite3.connect(path) as db:
        db.execute("UPDATE rsvlm_index_meta SET value = ? WHERE key = 'tiles'", (json.dumps(5),))
    with pytest.raises(RsVlmError, match="incomplete"):
        EmbeddingIndex.open(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE rsvlm_index_meta SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(RsVlmError, match="version 99, which this plugin cannot read"):
        EmbeddingIndex.open(path)
