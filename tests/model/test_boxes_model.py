"""The object box head in the exported bundle (issue 22), through the real jobs and onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.locate.boxes import BoxConfig, answer_kind
from rs_vlm_plugin.core.locate.metrics import box_iou
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.raster import ArraySource, open_raster


def test_the_bundle_has_a_box_head_checked_against_torch(bundle):
    spec = bundle.box_head
    assert spec is not None, "python3 build.py export writes boxes.onnx from resources/weights/rs_vlm_boxes.npz"
    assert spec["parity_max_abs_diff"] <= 1e-3
    assert spec["window"] == spec["tile"] + 2 * spec["margin"]
    assert (bundle.folder / spec["file"]).is_file()
    assert spec["training"]["map50_trained"] > 0.3  # the head's own val figure, written by rs_vlm_train.boxes


@pytest.mark.parametrize("text, kind", [("storage tanks", "boxes"), ("airplanes", "boxes"), ("oil storage tanks", "boxes"),
                                        ("ships", "boxes"), ("a forest", "outlines"), ("flooded fields", "outlines"),
                                        ("farmland", "outlines")])
def test_objects_get_boxes_and_regions_get_outlines(bundle, text, kind):
    assert answer_kind(bundle, text) == kind


def test_the_user_can_choose_how_answers_are_drawn(bundle):
    assert answer_kind(bundle, "a forest", "boxes") == "boxes"
    assert answer_kind(bundle, "airplanes", "outlines") == "outlines"
    with pytest.raises(ValueError, match="answers must be one of"):
        answer_kind(bundle, "airplanes", "circles")


def demo_boxes(bundle, demo_scene, text="vehicles", **box):
    config = JobConfig(plan=PlanConfig(max_tiles=24), max_hits=3, answers="boxes",
                       boxes=BoxConfig(**({"min_score": 0.0, "max_boxes": 40} | box)))
    with open_raster(demo_scene) as source:
        result = search(source, bundle, text, config=config)
        return result, source.georef.extent


def test_boxes_are_ranked_unique_and_inside_their_tiles(bundle, demo_scene):
    result, extent = demo_boxes(bundle, demo_scene)
    boxes = result.outlines
    assert boxes, "with no minimum score the head's peaks on the chosen tiles are boxes"
    assert len(boxes) <= 40
    assert [b.rank for b in boxes] == list(range(1, len(boxes) + 1))
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    assert all(b.shape == "box" and b.found_by == "boxes" and 0.0 <= b.score <= 1.0 for b in boxes)
    footprints = {t.key: t.extent for t in result.plan.nodes}
    for b in boxes:
        e = b.extent
        assert extent.xmin <= e.xmin < e.xmax <= extent.xmax and extent.ymin <= e.ymin < e.ymax <= extent.ymax
        tile = footprints[b.tile]
        cx, cy = (e.xmin + e.xmax) / 2, (e.ymin + e.ymax) / 2
        # the centre lies in its tile (unless the box was cut at the raster's edge)
        if e.xmin > extent.xmin and e.xmax < extent.xmax and e.ymin > extent.ymin and e.ymax < extent.ymax:
            assert tile.xmin - 1e-6 <= cx <= tile.xmax + 1e-6 and tile.ymin - 1e-6 <= cy <= tile.ymax + 1e-6
    tuples = [b.extent.as_tuple() for b in boxes]
    assert all(box_iou(a, c) < 0.5 for i, a in enumerate(tuples) for c in tuples[i + 1:])
    assert result.timings["box_tiles"] <= 24  # the head runs on tiles the budget paid for, no more


def test_min_score_and_max_boxes_bound_the_answers(bundle, demo_scene):
    everything, _ = demo_boxes(bundle, demo_scene)
    few, _ = demo_boxes(bundle, demo_scene, max_boxes=3)
    assert [b.extent for b in few.outlines] == [b.extent for b in everything.outlines[:3]]
    cut = everything.outlines[len(everything.outlines) // 2].score
    strict, _ = demo_boxes(bundle, demo_scene, min_score=cut)
    assert strict.outlines and all(b.score >= cut for b in strict.outlines)
    assert len(strict.outlines) < len(everything.outlines)


def test_a_region_query_keeps_relevance_outlines(bundle, demo_scene):
    with open_raster(demo_scene) as source:
        result = search(source, bundle, "a forest", config=JobConfig(plan=PlanConfig(max_tiles=16), max_hits=3))
    # routed to the relevance outlines (which may be empty: the forest fills every tile, nothing stands out)
    assert result.outlines is not None and all(o.found_by == "relevance" and o.tile == "" for o in result.outlines)
    assert "box_tiles" not in result.timings


def test_a_raster_of_one_tile_gets_boxes(bundle):
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, (3, 120, 140), dtype=np.uint8)  # bands, rows, columns
    result = search(ArraySource(image, name="tiny"), bundle, "storage tanks",
                    config=JobConfig(answers="boxes", boxes=BoxConfig(min_score=0.0)))
    assert result.outlines is not None
    for b in result.outlines:
        e = b.extent
        assert 0 <= e.xmin < e.xmax <= 140 and e.ymin < e.ymax


def test_a_scene_of_20000_pixels_gets_boxes_within_the_budget(bundle, demo_scene, tmp_path):
    # a 20,000 x 20,000 px VRT at 0.5 m holding the demo scene (nine copies along the diagonal); the rest is nodata
    def band(b: int) -> str:
        copies = "".join(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{demo_scene}</SourceFilename><SourceBand>{b}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="1249" ySize="1035"/><DstRect xOff="{k * 2200}" yOff="{k * 2200}" '
            f'xSize="1249" ySize="1035"/></ComplexSource>' for k in range(9))
        return f'<VRTRasterBand dataType="Byte" band="{b}"><NoDataValue>0</NoDataValue>{copies}</VRTRasterBand>'

    bands = "".join(band(b) for b in (1, 2, 3))
    path = tmp_path / "huge.vrt"
    path.write_text('<VRTDataset rasterXSize="20000" rasterYSize="20000"><SRS>EPSG:32612</SRS>'
                    '<GeoTransform>541000, 0.5, 0, 4988000, 0, -0.5</GeoTransform>' + bands + "</VRTDataset>",
                    encoding="utf-8")
    config = JobConfig(plan=PlanConfig(max_tiles=16), max_hits=3, answers="boxes", boxes=BoxConfig(min_score=0.0))
    with open_raster(path) as source:
        result = search(source, bundle, "airplanes", config=config)
        extent = source.georef.extent
    assert result.timings["box_tiles"] <= 16
    assert all(extent.xmin <= b.extent.xmin and b.extent.xmax <= extent.xmax for b in result.outlines)


def test_training_val_decodes_the_head_as_the_exported_graph_does():
    """The val mAP that chooses the epoch must score the boxes a search draws: rs_vlm_train's decode of
    the head's raw outputs and the runtime's ``_tile_boxes`` of BoxNet's activated ones give the same
    boxes and scores (an offset left as logits once cost val 0.17 mAP)."""
    import torch

    from rs_vlm_plugin.core.geometry import Extent
    from rs_vlm_plugin.core.locate.boxes import _tile_boxes
    from rs_vlm_plugin.modeling.boxnet import STRIDE, BoxHead
    from rs_vlm_train.boxes import decode

    torch.manual_seed(0)
    head = BoxHead((40, 112, 192)).eval()
    with torch.inference_mode():
        feats = [torch.randn(1, c, 320 // s, 320 // s) for c, s in ((40, 8), (112, 16), (192, 32))]
        raw = head(*feats)
        boxes, heat, emb = decode(*raw, k=50, min_heat=0.05)
        activated = (torch.sigmoid(raw[0]), raw[1], torch.sigmoid(raw[2]),
                     torch.nn.functional.normalize(raw[3], dim=1))
    query = emb[0] / np.linalg.norm(emb[0])
    scale, bias = 10.0, -5.0
    want = heat / (1 + np.exp(-(scale * emb @ query + bias)))
    whole = Extent(0.0, 0.0, 320.0, 320.0)  # one map unit per pixel, y up
    maps = [activated[0][0, 0].numpy(), *(a[0].numpy() for a in activated[1:])]
    got = _tile_boxes(*maps, whole, [whole], 320, STRIDE, query.astype(np.float32),
                      scale, bias, BoxConfig(min_heat=0.05, peaks=50), row=0)
    assert len(boxes) >= 5 and len(got) == len(boxes)
    pixel = np.array([(x1, 320 - y2, x2, 320 - y1) for _, (x1, y1, x2, y2), _ in got])
    np.testing.assert_allclose(pixel, boxes, atol=1e-3)
    np.testing.assert_allclose([s for s, _, _ in got], want, rtol=1e-4, atol=1e-6)
