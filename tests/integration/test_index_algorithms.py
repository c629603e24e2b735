"""Build embedding index / Search embedding index through ``processing.run`` in a real headless QGIS,
with the real model and generated GeoTIFFs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_algorithms import RecordingFeedback, layer_names, read_layer

from rs_vlm_plugin.core.jobs.index import TILES_LAYER, EmbeddingIndex
from rs_vlm_plugin.core.jobs.results import SEARCH_LAYER

MAX_TILES = 8


@pytest.fixture()
def processing(plugin):
    import processing

    return processing


@pytest.fixture(scope="module")
def built_index(plugin, rasters, bundle_dir, tmp_path_factory) -> Path:
    """The generated scene indexed once through Processing."""
    import processing

    out = tmp_path_factory.mktemp("index") / "scene.gpkg"
    feedback = RecordingFeedback.make()
    result = processing.run("rsvlm:build_index", {"INPUT": str(rasters["scene"]), "MAX_TILES": MAX_TILES,
                                                  "OUTPUT": str(out)}, feedback=feedback)
    assert Path(result["OUTPUT"]) == out
    assert feedback.progress and max(feedback.progress) == pytest.approx(100.0)
    return out


def test_index_algorithms_are_registered(plugin):
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    expected = {"rsvlm:build_index": ["INPUT", "EXTENT", "MAX_TILES", "MODEL", "OUTPUT", "GUIDE", "SCHEDULER"],
                "rsvlm:search_index": ["INDEX", "QUERY", "MAX_HITS", "MODEL", "OUTPUT"]}
    for alg_id, params in expected.items():
        alg = registry.algorithmById(alg_id)
        assert alg is not None, alg_id
        assert [p.name() for p in alg.parameterDefinitions()] == params
        assert alg.shortHelpString() and alg.displayName() and alg.group()
        assert alg.flags() & alg.FlagSupportsBatch and alg.flags() & alg.FlagCanCancel
        assert type(alg.createInstance()) is type(alg)
    search = registry.algorithmById("rsvlm:search_index")
    assert search.parameterDefinition("MODEL").flags() & search.parameterDefinition("MODEL").FlagOptional
    assert {o.name() for o in search.outputDefinitions()} == {"OUTPUT", "N_HITS", "BEST_SCORE"}
    assert {o.name() for o in registry.algorithmById("rsvlm:build_index").outputDefinitions()} == {"OUTPUT", "N_TILES"}
    build = registry.algorithmById("rsvlm:build_index")
    for name in ("GUIDE", "SCHEDULER"):  # both optional (empty: the complexity plan, run here) and explained
        definition = build.parameterDefinition(name)
        assert definition.flags() & definition.FlagOptional and not definition.defaultValue()
        assert f"{name} (optional)" in build.shortHelpString()


def test_build_index_writes_footprints_qgis_can_show(built_index, rasters):
    index = EmbeddingIndex.open(built_index)
    assert layer_names(built_index)[0] == TILES_LAYER
    rows, layer = read_layer(built_index, TILES_LAYER)
    assert layer.crs().authid() == "EPSG:26914"
    assert len(rows) == len(index) >= index.meta["plan_summary"]["tiles"]
    assert sorted(r["tile_id"] for r in rows) == list(range(len(index)))
    assert {r["level"] for r in rows} <= {"region", "object"}
    whole = rows[0]["_bbox"]
    for row in rows:
        whole.combineExtentWith(row["_bbox"])
    assert whole.xMinimum() == pytest.approx(500000.0) and whole.yMaximum() == pytest.approx(4100000.0)
    assert whole.width() == pytest.approx(256.0) and whole.height() == pytest.approx(256.0)
    meta = index.meta
    assert meta["source_name"] == "scene" and meta["source_id"].startswith("gdal:")
    assert str(rasters["scene"]) in meta["source_id"]


def test_search_index_ranks_like_search_raster(processing, built_index, rasters, bundle_dir, tmp_path):
    hits = tmp_path / "hits.gpkg"
    feedback = RecordingFeedback.make()
    result = processing.run("rsvlm:search_index", {"INDEX": str(built_index), "QUERY": "a road", "MAX_HITS": 3,
                                                   "OUTPUT": str(hits)}, feedback=feedback)
    assert result["N_HITS"] == 3 and Path(result["OUTPUT"]) == hits
    assert layer_names(hits) == [SEARCH_LAYER]
    rows, layer = read_layer(hits, SEARCH_LAYER)
    assert layer.crs().authid() == "EPSG:26914"
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert result["BEST_SCORE"] == pytest.approx(rows[0]["score"])
    assert all(r["query"] == "a road" and r["caption"].strip() and r["source"] == "scene" for r in rows)
    assert any("Searched" in info and "scoring" in info for info in feedback.infos)

    # The index (no GUIDE) holds the complexity plan's tiles, so it ranks like a search of the raster on
    # that plan with the same budget: the search of the core with text guidance off. (search_raster
    # itself is text-guided: it plans for its query, which an index built before any query cannot.)
    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.core.planning.dris import PlanConfig
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.core.jobs.search import search
    from rs_vlm_plugin.core.raster import open_raster

    config = JobConfig(plan=PlanConfig(max_tiles=MAX_TILES), max_hits=3, guided=False, outlines=False)
    with open_raster(rasters["scene"]) as source:
        reference = search(source, ModelBundle.load(bundle_dir), "a road", config=config).hits
    # float16 embeddings: the same scores to half precision, the same best tile
    assert [r["score"] for r in rows] == pytest.approx([h.score for h in reference], abs=3e-3)
    best = rows[0]["_bbox"]
    assert (best.xMinimum(), best.yMinimum(), best.xMaximum(), best.yMaximum()) == pytest.approx(
        (reference[0].extent.xmin, reference[0].extent.ymin, reference[0].extent.xmax, reference[0].extent.ymax))


def test_search_index_results_load_styled(processing, built_index, tmp_path, project):
    from qgis.core import QgsGraduatedSymbolRenderer

    processing.runAndLoadResults("rsvlm:search_index", {"INDEX": str(built_index), "QUERY": "trees", "MAX_HITS": 3,
                                                        "OUTPUT": str(tmp_path / "loaded.gpkg")})
    loaded = {layer.name(): layer for layer in project.mapLayers().values()}
    layer = loaded['Search hits: "trees"']
    assert layer.featureCount() == 3
    assert isinstance(layer.renderer(), QgsGraduatedSymbolRenderer)


def test_search_index_errors_are_sentences(processing, built_index, rasters, bundle_dir, tmp_path):
    from qgis.core import QgsProcessingException

    out = tmp_path / "hits.gpkg"
    with pytest.raises(QgsProcessingException, match="search text is empty"):
        processing.run("rsvlm:search_index", {"INDEX": str(built_index), "QUERY": "  ", "OUTPUT": str(out)})
    with pytest.raises(QgsProcessingException, match="does not exist"):
        processing.run("rsvlm:search_index", {"INDEX": str(tmp_path / "nope.gpkg"), "QUERY": "trees",
                                              "OUTPUT": str(out)})
    processing.run("rsvlm:search_raster", {"INPUT": str(rasters["scene"]), "QUERY": "trees", "MAX_TILES": 4,
                                           "OUTPUT": str(tmp_path / "plain.gpkg")})
    with pytest.raises(QgsProcessingException, match="not an RS-VLM embedding index"):
        processing.run("rsvlm:search_index", {"INDEX": str(tmp_path / "plain.gpkg"), "QUERY": "trees",
                                              "OUTPUT": str(out)})
    other = tmp_path / "re-exported"  # the same ONNX files behind another manifest
    other.mkdir()
    for item in Path(bundle_dir).iterdir():
        if item.name != "manifest.json":
            (other / item.name).symlink_to(item.resolve())
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "note": "exported again"}))
    with pytest.raises(QgsProcessingException, match="built with the model .*build the index again"):
        processing.run("rsvlm:search_index", {"INDEX": str(built_index), "QUERY": "trees", "MODEL": str(other),
                                              "OUTPUT": str(out)})
    assert not out.exists()


def test_build_index_cancel_writes_nothing(processing, rasters, tmp_path, bundle_dir):
    out = tmp_path / "cancelled.gpkg"
    feedback = RecordingFeedback.make(cancel_on_first_progress=True)
    result = processing.run("rsvlm:build_index", {"INPUT": str(rasters["scene"]), "MAX_TILES": MAX_TILES,
                                                  "OUTPUT": str(out)}, feedback=feedback)
    assert feedback.isCanceled() and "OUTPUT" not in result
    assert list(tmp_path.iterdir()) == []
