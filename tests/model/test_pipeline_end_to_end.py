"""End to end through the core with the real default model: real and generated rasters."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import LineString

from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.errors import CancelledError, RsVlmError
from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.gpkg import write_geopackage
from rs_vlm_plugin.core.jobs.ask import ask
from rs_vlm_plugin.core.jobs.classify import classify
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.describe import describe
from rs_vlm_plugin.core.jobs.results import result_layers
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.progress import RecordingProgress
from rs_vlm_plugin.core.raster import open_raster

# The paved road in the demo scene, traced by eye in pixel (col, row) coordinates of the
# 1249 x 1035 NEON crop: it enters at the top left and leaves at the bottom, curving east.
ROAD_PIXELS = [(172, 0), (203, 156), (265, 312), (359, 468), (453, 624), (531, 781), (609, 937), (656, 1035)]
# Natural, wooded or shrubby scenes: the knowledge base has no "conifer forest" scene, and at
# 10 cm crowns and shadows also read as chaparral (dense shrubs) to a model trained at 0.3 m.
FOREST_SCENES = {"forest", "mountain", "wetland", "sparse_forest", "woodland", "conifer_forest", "park",
                 "meadow", "savanna", "rangeland", "chaparral"}


# Half the width of the road's carriageway. Measured on the image as the run of bright grey pixels
# across the trace (min RGB > 150, max - min < 40): 7.1 m wide at row 5, 5.1 m at row 600, 9.4 m at
# row 1030; half the narrowest is 2.5 m.
ROAD_HALF_WIDTH_M = 2.5


def road_line(georef) -> LineString:
    return LineString([(georef.origin_x + c * georef.pixel_width, georef.origin_y - r * georef.pixel_height)
                       for c, r in ROAD_PIXELS])


def road_surface(georef):
    """The carriageway, not only its traced line: a tile that shows a strip of the road along its edge
    (a native-resolution tile of text-guided search, 22.4 m a side) shows the road."""
    return road_line(georef).buffer(ROAD_HALF_WIDTH_M / georef.metres_per_unit, cap_style=2)


@pytest.fixture(scope="module")
def demo_describe(bundle, demo_scene):
    with open_raster(demo_scene) as source:
        progress = RecordingProgress()
        return describe(source, bundle, config=JobConfig(plan=PlanConfig(max_tiles=32)), progress=progress), progress


def test_describe_gives_three_levels_with_captions(demo_describe):
    result, progress = demo_describe
    levels = result.by_level()
    assert len(levels["global"]) == 1
    assert len(levels["region"]) == 4
    assert len(levels["object"]) == result.plan.n_tiles
    for record in result.records:
        assert record.caption and record.caption[0].isupper() and record.caption.endswith(".")
        assert 0.0 < record.score <= 1.0
        assert record.concepts and record.concepts[0][1] == pytest.approx(record.score)
        assert record.gsd_m >= 0.1 * (1 - 1e-6)  # never finer than the 10 cm native pixels
    assert progress.fractions == sorted(progress.fractions) and progress.fractions[-1] == 1.0
    assert any("Encoding" in s for s in progress.stages)


def test_describe_sees_a_forest(demo_describe, bundle):
    result, _ = demo_describe
    kb = bundle.knowledge_base
    ids = {c.name: c.id for c in kb.concepts}
    top_scene = ids[result.by_level()["global"][0].concepts[0][0]]
    assert top_scene in FOREST_SCENES, result.global_caption
    objects = [ids[r.concepts[0][0]] for r in result.by_level()["object"]]
    tree_like = [o for o in objects if "tree" in o or "forest" in o or "shadow" in o or "crown" in o
                 or "canopy" in o or "conifer" in o]
    assert len(tree_like) >= len(objects) // 2, objects


def test_captions_are_decoded_per_tile(demo_describe, bundle):
    """With a decoder, every tile gets its own decoded sentence: not all the same, and the
    global caption speaks of trees or forest (the demo is conifer forest with a road)."""
    result, progress = demo_describe
    assert bundle.has_decoder
    captions = [r.caption for r in result.records]
    assert len(set(captions)) >= 2, captions
    assert any(w in result.global_caption.lower() for w in ("tree", "forest", "green", "plants")), result.global_caption
    assert any("Writing captions" in s for s in progress.stages)
    vocab = set(bundle.vocab)
    for caption in captions:
        assert set(caption.lower().rstrip(".").split()) <= vocab


def test_routing_is_reported_per_tier(demo_describe, bundle):
    result, _ = demo_describe
    routing = result.timings["routing"]
    assert set(routing) == {"global token", "region tokens", "object tokens"}
    for weights in routing.values():
        assert len(weights) == len(bundle.manifest["image_encoder"]["experts"])
        assert sum(weights) == pytest.approx(1.0, abs=2e-3)


def test_classify_demo_scene_is_mostly_forest(bundle, demo_scene):
    classes = ["forest", "water", "buildings", "farmland"]
    with open_raster(demo_scene) as source:
        result = classify(source, bundle, classes, config=JobConfig(plan=PlanConfig(max_tiles=32)))
    shares = result.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert max(shares, key=shares.get) == "forest", shares
    assert result.scene[0][0] == "forest", result.scene
    assert all(r.label in classes and 0.25 <= r.confidence <= 1.0 for r in result.records)
    assert {r.level for r in result.records} == {"object"}


def test_classify_needs_two_classes(bundle, demo_scene):
    with open_raster(demo_scene) as source, pytest.raises(RsVlmError, match="at least two classes"):
        classify(source, bundle, ["forest"])


@pytest.fixture(scope="module")
def answers(bundle, demo_scene):
    questions = ["Is there a forest?", "Is there an airplane?", "What is this area?", "Where is the road?",
                 "How much of the area is forest?", "How much of the area is water?"]
    with open_raster(demo_scene) as source:
        return {q: ask(source, bundle, q, config=JobConfig(plan=PlanConfig(max_tiles=32))) for q in questions}


def test_presence_answers_follow_the_calibrated_threshold(answers, bundle):
    forest, airplane = answers["Is there a forest?"], answers["Is there an airplane?"]
    assert forest.value is True and forest.answer.startswith("Yes"), forest.answer
    assert airplane.value is False and airplane.answer.startswith("No"), airplane.answer
    assert all(e.score >= bundle.presence_threshold for e in forest.evidence)
    assert len(airplane.evidence) == 1  # the best tile, shown as the closest call


def test_scene_where_and_share_answers(answers, bundle, demo_scene):
    ids = {c.name: c.id for c in bundle.knowledge_base.concepts}
    scene = answers["What is this area?"]
    assert ids[scene.value] in FOREST_SCENES, scene.answer
    assert scene.evidence[0].level == "global"
    where = answers["Where is the road?"]
    with open_raster(demo_scene) as source:
        road = road_line(source.georef)
    assert where.evidence and any(e.extent.to_polygon().intersects(road) for e in where.evidence[:2]), where.answer
    forest, water = answers["How much of the area is forest?"], answers["How much of the area is water?"]
    assert 0.5 <= forest.value <= 1.0 and water.value < forest.value, (forest.answer, water.answer)
    assert len(forest.evidence) >= 1 and all(e.caption for e in forest.evidence[:3])


def test_search_finds_the_road(bundle, demo_scene):
    with open_raster(demo_scene) as source:
        result = search(source, bundle, "a paved road", config=JobConfig(plan=PlanConfig(max_tiles=32), max_hits=5))
        road, surface = road_line(source.georef), road_surface(source.georef)
    assert [h.rank for h in result.hits] == list(range(1, len(result.hits) + 1))
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    top = result.hits[0]
    assert top.extent.to_polygon().intersects(surface), (top.extent, top.caption)
    on_road = sum(h.extent.to_polygon().intersects(road) for h in result.hits[:3])
    assert on_road >= 2


def test_dris_encodes_fewer_tiles_than_uniform(bundle, demo_scene):
    with open_raster(demo_scene) as source:
        dris = describe(source, bundle, config=JobConfig(plan=PlanConfig(max_tiles=10)))
        uniform = describe(source, bundle, config=JobConfig(plan=PlanConfig(uniform=True)))
    assert dris.plan.n_tiles <= 10 < uniform.plan.n_tiles
    assert dris.timings["tiles"] < uniform.timings["tiles"]
    assert min(t.gsd for t in uniform.plan.leaves) >= source.georef.native_gsd * (1 - 1e-9)


def test_cancel_between_batches_raises_and_stops(bundle, demo_scene):
    with open_raster(demo_scene) as source:
        progress = RecordingProgress(cancel_after=1)
        with pytest.raises(CancelledError):
            describe(source, bundle, config=JobConfig(batch_size=4), progress=progress)


def test_empty_query_is_a_sentence(bundle, demo_scene):
    with open_raster(demo_scene) as source, pytest.raises(RsVlmError, match="search text is empty"):
        search(source, bundle, "   ")


def test_extent_outside_the_raster_is_a_sentence(bundle, demo_scene):
    with open_raster(demo_scene) as source, pytest.raises(RsVlmError, match="does not overlap"):
        describe(source, bundle, extent=Extent(0, 0, 10, 10))


def test_generated_scene_complexity_reaches_the_records(bundle, generated):
    with open_raster(generated["scene"]) as source:
        result = describe(source, bundle, config=JobConfig(plan=PlanConfig(max_tiles=16)))
        cx = source.georef.extent.center[0]
    objects = result.by_level()["object"]
    west = [r.complexity for r in objects if r.extent.xmax <= cx]
    east = [r.complexity for r in objects if r.extent.xmin >= cx]
    assert west and east and max(west) < min(east)


def test_raster_without_crs_is_processed_in_pixels(bundle, generated, tmp_path):
    with open_raster(generated["no_crs"]) as source:
        result = describe(source, bundle, config=JobConfig(plan=PlanConfig(max_tiles=4)))
    assert result.crs_wkt is None
    assert any("no CRS" in w for w in result.warnings)
    out = write_geopackage(tmp_path / "nocrs.gpkg", result_layers(result), result.crs_wkt)
    assert out.exists()


@pytest.mark.parametrize("name", ["uint16_nodata", "float32_geographic"])
def test_non_byte_rasters_are_stretched(bundle, generated, name):
    with open_raster(generated[name]) as source:
        result = describe(source, bundle, config=JobConfig(plan=PlanConfig(max_tiles=4)))
    assert any("percentile" in w for w in result.warnings)
    assert all(np.isfinite(r.score) for r in result.records)


def test_osbs_geotiff_as_shipped(bundle, osbs_scene):
    with open_raster(osbs_scene) as source:
        result = describe(source, bundle, config=JobConfig(plan=PlanConfig(max_tiles=8)))
        assert "32617" in (source.georef.crs_wkt or "") or "UTM zone 17N" in (source.georef.crs_wkt or "")
    assert result.global_caption
