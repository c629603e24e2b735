"""Search with outlines on a generated raster with the real bundle: the outline layer is written, scored,
inside the raster and beside the tile hits; the guided plan reads its finest tiles at native resolution."""

from __future__ import annotations

import pytest

from rs_vlm_plugin.core.dris import PlanConfig
from rs_vlm_plugin.core.gpkg import read_layer_names, write_geopackage
from rs_vlm_plugin.core.locate.relevance import LocateConfig
from rs_vlm_plugin.core.pipeline import (EVIDENCE_OUTLINE_LAYER, SEARCH_LAYER, SEARCH_OUTLINE_LAYER, JobConfig, ask,
                                        result_kinds, result_layers, search)
from rs_vlm_plugin.core.plan_layer import plan_records
from rs_vlm_plugin.core.raster import open_raster

ogr = pytest.importorskip("osgeo.ogr")


def features(path, layer_name):
    ds = ogr.Open(str(path))
    layer = ds.GetLayerByName(layer_name)
    rows = [(f.GetField("score"), f.GetField("shape"), f.GetField("rank"), f.GetGeometryRef().ExportToWkt())
            for f in layer]
    ds = None
    return rows


@pytest.fixture(scope="module")
def found(bundle, generated):
    # A low threshold: the generated scene holds no real objects, and the test is of the layer, not the model.
    # One root cell, so that the small scene is refined level by level down to native resolution.
    config = JobConfig(plan=PlanConfig(max_tiles=24, native_roots=1), locate=LocateConfig(threshold=0.05))
    with open_raster(generated["scene"]) as source:
        return search(source, bundle, "buildings", config=config), source.georef


def test_search_writes_scored_outlines_beside_the_hits(found, tmp_path):
    from shapely import wkt

    result, georef = found
    assert result.outlines, "no outline at a 0.05 threshold"
    layers = result_layers(result)
    assert list(layers) == [SEARCH_LAYER, SEARCH_OUTLINE_LAYER]
    out = write_geopackage(tmp_path / "hits.gpkg", layers, result.crs_wkt, kinds=result_kinds(result))
    assert read_layer_names(out) == [SEARCH_LAYER, SEARCH_OUTLINE_LAYER]
    rows = features(out, SEARCH_OUTLINE_LAYER)
    assert len(rows) == len(result.outlines)
    scores = [score for score, _, _, _ in rows]
    assert scores == sorted(scores, reverse=True) and all(0.05 <= s <= 1.0 for s in scores)
    assert [rank for *_, rank, _ in rows] == list(range(1, len(rows) + 1))
    assert {shape for _, shape, _, _ in rows} <= {"box", "polygon"}
    raster = georef.extent.to_polygon().buffer(1e-6)
    for *_, geometry in rows:
        polygon = wkt.loads(geometry)
        assert polygon.is_valid and polygon.area > 0 and raster.contains(polygon)


def test_guided_search_ends_on_native_tiles_within_the_budget(found):
    result, georef = found
    plan = result.plan
    assert plan.config.native
    assert result.timings["tiles"] <= 24  # every tile encoded counts, the coarse ones too
    assert min(t.gsd for t in plan.leaves) == pytest.approx(georef.native_gsd)
    assert all(t.gsd >= georef.native_gsd * (1 - 1e-9) for t in plan.nodes)
    records = plan_records(plan, georef.metres_per_unit, "scene")
    split = [r for r in records if not r.is_leaf]
    assert split and {r.reason for r in split} <= {"query", "complexity"}
    assert all(r.score is not None for r in records if r.key in plan.scores)


def test_default_threshold_keeps_background_out(bundle, generated):
    with open_raster(generated["scene"]) as source:
        result = search(source, bundle, "airplanes", config=JobConfig(plan=PlanConfig(max_tiles=24)))
    area = sum(o.area_m2 for o in result.outlines)
    extent = result.plan.extent
    assert area <= 0.1 * extent.width * extent.height  # a generated scene has no airplanes


def test_ask_where_outlines_and_the_uniform_search_does_too(bundle, generated, tmp_path):
    config = JobConfig(plan=PlanConfig(max_tiles=24), locate=LocateConfig(threshold=0.05))
    with open_raster(generated["scene"]) as source:
        answer = ask(source, bundle, "where are the buildings?", config=config)
        uniform = search(source, bundle, "buildings", config=JobConfig(plan=PlanConfig(uniform=True), guided=None,
                                                                        locate=LocateConfig(threshold=0.05)))
        presence = ask(source, bundle, "is there a building?", config=config)
    assert answer.outlines and EVIDENCE_OUTLINE_LAYER in result_layers(answer)
    assert presence.outlines is None and EVIDENCE_OUTLINE_LAYER not in result_layers(presence)
    assert not uniform.plan.config.native and uniform.outlines  # --uniform keeps the old grid, outlines from leaves
