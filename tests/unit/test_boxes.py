"""The box answers' own arithmetic (issue 22): peaks to map boxes, seams, suppression, settings."""

import numpy as np
import pytest

from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.locate.boxes import BoxConfig, _tile_boxes, box_parts, suppress

STRIDE = 8
WINDOW = 320  # 40 x 40 cells


def head_outputs(peaks: list[tuple[int, int, float, float]], dim: int = 4):
    """Heat, log sizes, offsets and embeddings of a 40 x 40 map with Gaussian-free single-cell peaks
    (row, column, heat, box side in px); every embedding points along the first axis."""
    n = WINDOW // STRIDE
    heat = np.zeros((n, n), np.float32)
    size = np.zeros((2, n, n), np.float32)
    offset = np.full((2, n, n), 0.5, np.float32)
    embed = np.zeros((dim, n, n), np.float32)
    embed[0] = 1.0
    for r, c, h, side in peaks:
        heat[r, c] = h
        size[:, r, c] = np.log(side / STRIDE)
    return heat, size, offset, embed


def run(peaks, footprint=None, query=None, config=None, scale=10.0, bias=-5.0):
    read = Extent(0.0, 0.0, 320.0, 320.0)  # 1 map unit per window pixel, north up
    footprint = footprint or Extent(48.0, 48.0, 272.0, 272.0)
    query = np.eye(4, dtype=np.float32)[0] if query is None else query
    return _tile_boxes(*head_outputs(peaks), read, [footprint], WINDOW, STRIDE, query, scale, bias,
                       config or BoxConfig(), row=7)


def test_a_peak_becomes_a_box_in_map_coordinates():
    (score, box, row), = run([(20, 10, 0.9, 32.0)])
    # centre: column 10.5 cells -> x 84; row 20.5 cells -> 164 px down from the top (y 320) -> 156
    assert box == pytest.approx((84 - 16, 156 - 16, 84 + 16, 156 + 16))
    assert row == 7
    # heat times the query's probability: sigmoid(10 * 1 - 5)
    assert score == pytest.approx(0.9 / (1 + np.exp(-5.0)), rel=1e-5)


def test_only_centres_in_the_tiles_own_footprint_are_kept():
    # column 3 is x 28, inside the margin; column 20 is x 164, inside the footprint
    got = run([(20, 3, 0.9, 16.0), (20, 20, 0.8, 16.0)])
    assert len(got) == 1 and got[0][1][0] == pytest.approx(164 - 8)


def test_weak_peaks_and_non_maxima_are_dropped():
    heat, size, offset, embed = head_outputs([(20, 20, 0.9, 16.0), (20, 21, 0.5, 16.0), (10, 10, 0.01, 16.0)])
    got = _tile_boxes(heat, size, offset, embed, Extent(0, 0, 320, 320), [Extent(0, 0, 320, 320)], WINDOW, STRIDE,
                      np.eye(4, dtype=np.float32)[0], 10.0, -5.0, BoxConfig(min_heat=0.05), 0)
    assert len(got) == 1  # the neighbour of a stronger peak and the peak under min_heat are not boxes


def test_an_unrelated_query_scores_low():
    near = run([(20, 20, 0.9, 16.0)])[0][0]
    far = run([(20, 20, 0.9, 16.0)], query=np.eye(4, dtype=np.float32)[1])[0][0]
    assert far < 0.01 < near


def test_suppression_keeps_the_best_of_overlapping_boxes_across_tiles():
    boxes = [(0.5, (0, 0, 10, 10), 1), (0.9, (1, 0, 11, 10), 2), (0.4, (30, 30, 40, 40), 1),
             (0.3, (0, 0, 10, 4), 3)]
    kept = suppress(boxes, 0.5)
    assert [k[0] for k in kept] == [0.9, 0.4, 0.3]  # the 0.5 box duplicates the 0.9 one from another tile


def test_suppression_of_nothing_is_nothing():
    assert suppress([], 0.5) == []


@pytest.mark.parametrize("kwargs, words", [({"min_score": 1.5}, "between 0 and 1"), ({"max_boxes": 0}, "1 or more"),
                                           ({"zoom_out": 0.5}, "1 .finest tiles only. or more")])
def test_box_settings_are_checked(kwargs, words):
    with pytest.raises(ValueError, match=words):
        BoxConfig(**kwargs)


def test_boxes_are_cut_to_the_raster_and_empty_ones_dropped():
    from rs_vlm_plugin.core.locate.boxes import clip_boxes

    got = clip_boxes([(0.9, (-5, -5, 5, 5), 0), (0.8, (110, 20, 130, 30), 0), (0.7, (90, 10, 120, 20), 1)],
                     Extent(0, 0, 100, 100))
    assert [b[1] for b in got] == [(0, 0, 5, 5), (90, 10, 100, 20)]  # the second lies outside


def guided_encoding_of(gsds, parts):
    """A guided encoding's tiles (their pixel sizes) and outline parts (row, footprint), nothing else."""
    from rs_vlm_plugin.core.encoding.tiles import EncodedTile
    from rs_vlm_plugin.core.locate.guided import GuidedEncoding

    tiles = [EncodedTile(f"t{i}", Extent(0.0, 0.0, 100.0 * g, 100.0 * g), 0, g, 0.0, ("object",))
             for i, g in enumerate(gsds)]
    return GuidedEncoding(plan=None, tiles=tiles, embeddings=np.zeros((len(tiles), 4)), timings={},
                          outline_parts=parts)


@pytest.mark.parametrize("zoom_out, rows", [(1.0, [0]), (2.0, [0, 1]), (4.0, [0, 1, 2])])
def test_the_head_runs_on_the_finest_view_of_each_part_down_to_its_zoom_out(zoom_out, rows):
    a, b, c, d = (Extent(x, 0.0, x + 1.0, 1.0) for x in range(4))
    encoding = guided_encoding_of([0.5, 1.0, 2.0], [(0, a), (1, b), (1, c), (2, d)])
    parts = box_parts(encoding, zoom_out)
    assert sorted(parts) == rows
    assert parts[0] == [a] and parts.get(1, [b, c]) == [b, c]  # a coarser tile over its uncovered parts only
