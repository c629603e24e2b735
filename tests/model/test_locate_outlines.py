"""Search with outlines on a generated raster with the real bundle: the outline layer is written, scored,
inside the raster and beside the tile hits; the guided plan reads its finest tiles at native resolution."""

from __future__ import annotations

import pytest

from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.gpkg import read_layer_names, write_geopackage
from rs_vlm_plugin.core.locate.relevance import LocateConfig
from rs_vlm_plugin.core.jobs.ask import ask
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.results import (EVIDENCE_OUTLINE_LAYER, SEARCH_LAYER, SEARCH_OUTLINE_LAYER, result_kinds,
                                             result_layers)
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.planning.plan_layer import plan_records
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
    # The guided plan starts two halvings above native: one root cell on this small scene, refined
    # level by level down to native resolution.
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


def test_guided_outlines_come_from_the_finest_tile_encoded_over_each_part(bundle, generated):
    from shapely.ops import unary_union

    from rs_vlm_plugin.core.expansion import expand_queries
    from rs_vlm_plugin.core.locate.guided import guided_encoding
    from rs_vlm_plugin.core.progress import NullProgress

    # 6 tiles for a 512 px scene (one 896 px root, four 448 px quadrants, nine native cells): the
    # budget cannot afford every quadrant, so splits are partial and coarser tiles outline the rest
    config = JobConfig(plan=PlanConfig(max_tiles=6))
    with open_raster(generated["scene"]) as source:
        scorer = expand_queries(bundle, ["buildings"]).scorer(0)
        encoding = guided_encoding(source, bundle, None, config, scorer, NullProgress(), text="buildings")
        extent = source.georef.extent
    plan = encoding.plan
    assert len(encoding.tiles) <= 6 and len(plan.nodes) == len(encoding.tiles)
    assert any(0 < len(plan.children_of(t.key)) < 4 for t in plan.nodes)  # only the quadrants worth it
    parts = encoding.outline_parts
    assert parts and all(row in encoding.objects for row, _ in parts)
    polygons = [footprint.to_polygon() for _, footprint in parts]
    union = unary_union(polygons)
    assert union.area == pytest.approx(sum(p.area for p in polygons))  # no part outlined twice
    assert union.area == pytest.approx(extent.width * extent.height)  # every part by its finest tile
    keys = {t.key: i for i, t in enumerate(encoding.tiles)}
    for row, footprint in parts:
        tile = encoding.tiles[row]
        assert tile.extent.to_polygon().buffer(1e-6).contains(footprint.to_polygon())
        for child in plan.children_of(tile.key):
            assert child.key in keys and footprint.to_polygon().intersection(child.extent.to_polygon()).area < 1e-6


def test_guided_search_answers_with_tiles_that_were_not_read_closer(found):
    result, _ = found
    plan = result.plan
    split = {(t.extent.as_tuple(), t.depth) for t in plan.nodes if plan.children_of(t.key)}
    assert split  # the plan refined some tiles
    assert result.hits and not [h for h in result.hits if (h.extent.as_tuple(), h.depth) in split]
