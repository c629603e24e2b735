"""The ``index`` and ``search-index`` commands: files written, summaries, exit codes."""

from __future__ import annotations

import json

from osgeo import ogr

from rs_vlm_plugin.core.cli import main
from rs_vlm_plugin.core.jobs.index import TILES_LAYER, EmbeddingIndex


def _layer_counts(path) -> dict[str, int]:
    ds = ogr.Open(str(path))
    try:
        return {ds.GetLayer(i).GetName(): ds.GetLayer(i).GetFeatureCount() for i in range(ds.GetLayerCount())}
    finally:
        ds = None


def test_index_then_search_index(bundle_dir, generated, tmp_path, capsys):
    index = tmp_path / "scene.gpkg"
    assert main(["index", str(generated["scene"]), "-o", str(index), "--max-tiles", "8", "-q",
                 "--model", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    opened = EmbeddingIndex.open(index)
    assert f"Indexed {len(opened)} tiles" in out and "Wrote" in out
    leaves = opened.meta["plan_summary"]["tiles"]
    assert _layer_counts(index)[TILES_LAYER] == len(opened)
    assert leaves <= len(opened) <= leaves + 4  # the 4 regions, stored once when they are leaves too

    hits = tmp_path / "hits.gpkg"
    assert main(["search-index", str(index), "a road", "-o", str(hits), "--max-hits", "3", "--json",
                 "--model", str(bundle_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in summary["hits"]] == [1, 2, 3]
    assert summary["hits"][0]["score"] >= summary["hits"][2]["score"]
    assert set(summary["timings_ms"]) >= {"open_ms", "text_ms", "score_ms"}
    assert _layer_counts(hits) == {"search_hits": 3}

    assert main(["search-index", str(index), "trees", "-o", str(tmp_path / "t.gpkg"), "--model", str(bundle_dir)]) == 0
    table = capsys.readouterr().out
    assert "scoring" in table and "rank" in table


def test_search_index_errors_are_sentences(bundle_dir, generated, tmp_path, capsys):
    out = tmp_path / "never.gpkg"
    assert main(["search-index", str(tmp_path / "nope.gpkg"), "trees", "-o", str(out),
                 "--model", str(bundle_dir)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["search-index", str(generated["scene"]), "trees", "-o", str(out), "--model", str(bundle_dir)]) == 1
    assert "is not an RS-VLM embedding index" in capsys.readouterr().err
    assert main(["index", str(generated["scene"]), "-o", str(tmp_path / "index.txt"), "-q",
                 "--model", str(bundle_dir)]) == 1
    assert "ending in .gpkg" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "index.txt").exists()
