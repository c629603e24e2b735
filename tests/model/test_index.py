"""The embedding index with the real model: build -> open -> search equals pipeline.search."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time

import numpy as np
import pytest
from osgeo import ogr

from rs_vlm_plugin.core.bundle import ModelBundle
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.errors import CancelledError, RsVlmError
from rs_vlm_plugin.core.jobs.identity import file_identity, model_fingerprint
from rs_vlm_plugin.core.jobs.index import TILES_LAYER, EmbeddingIndex, build_index, default_index_path, find_index
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.progress import RecordingProgress
from rs_vlm_plugin.core.raster import open_raster

# An index is built on the complexity plan (it serves every later query), so it is compared with a
# search on that same plan: guided=False (search plans text-guided by default).
CONFIG = JobConfig(plan=PlanConfig(max_tiles=16), max_hits=8, guided=False)
QUERIES = ("trees", "a road through a forest", "bare soil", "a river")


@pytest.fixture(scope="module")
def built(bundle, demo_scene, tmp_path_factory):
    """The demo scene indexed twice (float32 and the default float16), and pipeline.search's hits."""
    folder = tmp_path_factory.mktemp("index")
    with open_raster(demo_scene) as source:
        exact = build_index(source, bundle, folder / "exact.gpkg", config=CONFIG, dtype="float32")
        half = build_index(source, bundle, folder / "half.gpkg", config=CONFIG)
        reference = {q: search(source, bundle, q, config=CONFIG) for q in QUERIES}
    return {"exact": exact, "half": half, "reference": reference, "folder": folder}


@pytest.fixture()
def other_bundle(bundle_dir, tmp_path):
    """The same ONNX files behind another manifest (as after a re-export)."""
    folder = tmp_path / "re-exported"
    folder.mkdir()
    for item in bundle_dir.iterdir():
        if item.name != "manifest.json":
            (folder / item.name).symlink_to(item)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["exported_note"] = "exported again"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return ModelBundle.load(folder)


def test_index_hits_equal_pipeline_search(built, bundle):
    index = EmbeddingIndex.open(built["exact"])
    for query, reference in built["reference"].items():
        result = index.search(bundle, query, max_hits=CONFIG.max_hits)
        assert len(result.hits) == len(reference.hits) == CONFIG.max_hits
        for got, want in zip(result.hits, reference.hits):
            assert (got.rank, got.level, got.depth, got.extent) == (want.rank, want.level, want.depth, want.extent)
            assert got.gsd_m == pytest.approx(want.gsd_m)
            assert got.score == pytest.approx(want.score, abs=1e-5)
            assert got.caption.strip() and got.query == query and got.source == "demo_scene"
        assert set(result.timings) >= {"text_s", "score_s"}
        assert result.plan.n_tiles == reference.plan.n_tiles
        assert result.crs_wkt == reference.crs_wkt


def test_float16_index_scores_match_within_half_precision(built, bundle):
    exact, half = EmbeddingIndex.open(built["exact"]), EmbeddingIndex.open(built["half"])
    assert half.meta["dtype"] == "float16" and exact.meta["dtype"] == "float32"
    assert os.path.getsize(built["half"]) < os.path.getsize(built["exact"])
    query = bundle.encode_texts(["trees"])[0]
    np.testing.assert_allclose(half.scores(query), exact.scores(query), atol=3e-3)


def test_index_file_contents(built, bundle, demo_scene):
    index = EmbeddingIndex.open(built["exact"])
    meta = index.meta
    assert meta["model_name"] == bundle.name and meta["model_fingerprint"] == model_fingerprint(bundle)
    assert meta["source_name"] == "demo_scene" and meta["source_id"] == file_identity(demo_scene)
    assert meta["tiles"] == len(index) == 4 + meta["plan_summary"]["tiles"]  # 4 regions + the leaves
    assert "UTM zone 12N" in meta["crs_wkt"] and meta["created"]
    ds = ogr.Open(str(built["exact"]))
    try:
        layer = ds.GetLayerByName(TILES_LAYER)
        assert layer.GetFeatureCount() == len(index)
        assert "UTM zone 12N" in layer.GetSpatialRef().ExportToWkt()
        rows = [(f["tile_id"], f["level"], f["depth"], f.GetGeometryRef().GetEnvelope()) for f in layer]
    finally:
        ds = None
    assert [r[0] for r in rows] == list(range(len(index)))
    assert {r[1] for r in rows} == {"region", "object"}
    for tile_id, _, depth, (xmin, xmax, ymin, ymax) in rows:
        e = index.extent(tile_id)
        assert (xmin, ymin, xmax, ymax) == pytest.approx((e.xmin, e.ymin, e.xmax, e.ymax))
        assert depth == index.depths[tile_id]


def test_min_score_and_empty_query(built, bundle):
    index = EmbeddingIndex.open(built["exact"])
    assert index.search(bundle, "trees", max_hits=5, min_score=2.0).hits == []
    with pytest.raises(RsVlmError, match="search text is empty"):
        index.search(bundle, "   ")


def test_another_model_is_a_sentence(built, other_bundle):
    index = EmbeddingIndex.open(built["exact"])
    with pytest.raises(RsVlmError, match="was built with the model rs-vlm-lite0.*exported again.*build the index again"):
        index.check_model(other_bundle)
    with pytest.raises(RsVlmError, match="build the index again"):
        index.search(other_bundle, "trees")


@pytest.mark.parametrize("when", ["encoding", "writing"])
def test_cancel_leaves_no_file(bundle, generated, tmp_path, when):
    class CancelAtWrite(RecordingProgress):
        def is_canceled(self) -> bool:
            return any(s.startswith("Writing the index") for s in self.stages)

    progress = RecordingProgress(cancel_after=2) if when == "encoding" else CancelAtWrite()
    out = tmp_path / "cancelled.gpkg"
    with open_raster(generated["scene"]) as source, pytest.raises(CancelledError):
        build_index(source, bundle, out, config=JobConfig(plan=PlanConfig(max_tiles=8), batch_size=2),
                    progress=progress)
    assert list(tmp_path.iterdir()) == []  # neither the index nor a temporary file


def test_output_must_be_a_geopackage(bundle, generated, tmp_path):
    with open_raster(generated["scene"]) as source, pytest.raises(RsVlmError, match="ending in .gpkg"):
        build_index(source, bundle, tmp_path / "index.sqlite")


def test_find_index_matches_source_and_model(bundle, other_bundle, generated, tmp_path):
    folder = tmp_path / "indexes"
    folder.mkdir()
    config = JobConfig(plan=PlanConfig(max_tiles=4))
    paths = {}
    for name in ("scene", "gradient"):
        source_id = file_identity(generated[name])
        path = default_index_path(folder, generated[name].name, source_id, bundle)
        assert path.name.startswith(f"{name}-") and path.name.endswith(".rsvlm-index.gpkg")
        with open_raster(generated[name]) as source:
            paths[name] = build_index(source, bundle, path, config=config)
    assert find_index(folder, file_identity(generated["scene"]), bundle) == paths["scene"]
    assert find_index(folder, file_identity(generated["gradient"]), bundle) == paths["gradient"]
    assert find_index(folder, "/elsewhere/scene.tif|1|2", bundle) is None
    assert find_index(folder, file_identity(generated["scene"]), other_bundle) is None
    assert default_index_path(folder, "scene.tif", "a", bundle) != default_index_path(folder, "scene.tif", "b", bundle)

    (folder / "broken.rsvlm-index.gpkg").write_text("not a database")  # ignored, not an error
    time.sleep(0.01)
    newer = folder / "scene-copy.rsvlm-index.gpkg"
    with open_raster(generated["scene"]) as source:
        build_index(source, bundle, newer, config=config, source_id=file_identity(generated["scene"]))
    assert find_index(folder, file_identity(generated["scene"]), bundle) == newer


def test_source_id_is_stored_as_given(bundle, generated, tmp_path):
    uri = "type=xyz&url=https://tiles.example/{z}/{x}/{y}.png"
    with open_raster(generated["scene"]) as source:
        path = build_index(source, bundle, tmp_path / "layer.gpkg", config=JobConfig(plan=PlanConfig(max_tiles=4)),
                           source_id=uri)
    assert EmbeddingIndex.open(path).meta["source_id"] == uri
    assert find_index(tmp_path, uri, bundle) is None  # only *.rsvlm-index.gpkg files are looked at
    shutil.copy(path, tmp_path / "layer.rsvlm-index.gpkg")
    assert find_index(tmp_path, uri, bundle) == tmp_path / "layer.rsvlm-index.gpkg"


def test_truncated_embeddings_are_a_sentence(built, tmp_path):
    path = tmp_path / "cut.gpkg"
    shutil.copy(built["exact"], path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM rsvlm_index_embeddings WHERE name = 'embedding'")
    with pytest.raises(RsVlmError, match="incomplete.*build it again"):
        EmbeddingIndex.open(path)
