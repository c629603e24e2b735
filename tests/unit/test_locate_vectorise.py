"""Relevance grids -> outlines: known grids give known polygons and boxes; AP of known detections."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.locate.metrics import average_precision, box_iou
from rs_vlm_plugin.core.locate.relevance import relevance
from rs_vlm_plugin.core.locate.vectorise import CellGrid, vectorise

WINDOW = Extent(0, 0, 40, 40)  # a 4 x 4 grid of 10-unit cells


def grid(*cells: tuple[int, int, float], size: int = 4) -> np.ndarray:
    values = np.zeros((size, size), np.float32)
    for r, c, v in cells:
        values[r, c] = v
    return values


# (values, expected outlines as (shape, bounds, cells, score))
CASES = {
    "one-cell-box": (grid((0, 0, 0.95)), [("box", (0, 30, 10, 40), 1, 0.95)]),
    "square-blob": (grid((1, 1, 0.9), (1, 2, 0.97), (2, 1, 0.92), (2, 2, 0.91)), [("box", (10, 10, 30, 30), 4, 0.97)]),
    "two-blobs": (grid((0, 0, 0.95), (3, 3, 0.99)),
                  [("box", (30, 0, 40, 10), 1, 0.99), ("box", (0, 30, 10, 40), 1, 0.95)]),
    "l-shape-polygon": (grid((0, 0, 0.9), (1, 0, 0.9), (2, 0, 0.9), (3, 0, 0.9), (3, 1, 0.9), (3, 2, 0.9), (3, 3, 0.9)),
                        [("polygon", (0, 0, 40, 40), 7, 0.9)]),
    "below-threshold": (grid((0, 0, 0.5), (2, 2, 0.79)), []),
    "corner-touch-stays-apart": (grid((0, 0, 0.9), (1, 1, 0.92)),
                                 [("box", (10, 20, 20, 30), 1, 0.92), ("box", (0, 30, 10, 40), 1, 0.9)]),
}


@pytest.mark.parametrize("values,expected", CASES.values(), ids=CASES.keys())
def test_known_grids_give_known_outlines(values, expected):
    found = vectorise([CellGrid(WINDOW, WINDOW, values)], threshold=0.8, max_box_cells=4)
    got = [(o.shape, tuple(round(v, 6) for v in o.bounds), o.cells, round(o.score, 6)) for o in found]
    assert got == [(s, b, n, pytest.approx(v)) for s, b, n, v in expected]


def test_l_shape_polygon_has_the_cells_area_not_its_box():
    values = CASES["l-shape-polygon"][0]
    (outline,) = vectorise([CellGrid(WINDOW, WINDOW, values)], threshold=0.8, max_box_cells=4)
    assert outline.geometry.area == pytest.approx(7 * 100)
    assert outline.geometry.is_valid


def test_cells_of_neighbouring_tiles_merge_and_footprints_clip():
    left = CellGrid(Extent(0, 0, 40, 40), Extent(0, 0, 40, 40), grid((1, 3, 0.9)))
    # the right tile's window reaches past the extent: its footprint keeps only the first 25 units
    right = CellGrid(Extent(40, 0, 80, 40), Extent(40, 0, 65, 40), grid((1, 0, 0.95), (1, 3, 0.99)))
    (outline,) = vectorise([left, right], threshold=0.8)
    assert outline.bounds == pytest.approx((30, 20, 50, 30))  # one blob across the tile border
    assert outline.cells == 2 and outline.score == pytest.approx(0.95)  # the cell outside the footprint is gone


def test_clipped_edge_cell_is_cut_to_the_footprint():
    cut = CellGrid(Extent(0, 0, 40, 40), Extent(0, 0, 35, 40), grid((0, 3, 0.9)))
    (outline,) = vectorise([cut], threshold=0.8)
    assert outline.bounds == pytest.approx((30, 30, 35, 40))


def test_min_cells_drops_specks():
    values = grid((0, 0, 0.9), (3, 2, 0.9), (3, 3, 0.9))
    found = vectorise([CellGrid(WINDOW, WINDOW, values)], threshold=0.8, min_cells=2)
    assert [o.cells for o in found] == [2]


def test_relevance_is_low_for_background_and_high_for_the_query():
    rng = np.random.default_rng(0)
    query = np.eye(8)[0]
    background = np.eye(8)[1:4]
    tokens = np.stack([query, background[0], background[2], (query + background[1]) / np.sqrt(2)])
    tokens = tokens + 0.01 * rng.standard_normal(tokens.shape)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    p = relevance(tokens, query, background, 20.0)
    assert p[0] > 0.99 and p[1] < 0.01 and p[2] < 0.01
    assert 0.2 < p[3] < 0.8
    # a background text close to the query counts for it
    assert relevance(tokens[:1], query, np.stack([query, background[0]]), 20.0)[0] > 0.99


def test_box_iou_and_average_precision():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    truths = [(0, 0, 10, 10), (20, 20, 30, 30)]
    assert average_precision([(0.9, (0, 0, 10, 10)), (0.8, (20, 20, 30, 30))], truths) == pytest.approx(1.0)
    # a false positive ranked first: precision 1/2 at recall 0.5, 2/3 at recall 1
    ap = average_precision([(0.95, (50, 50, 60, 60)), (0.9, (0, 0, 10, 10)), (0.8, (20, 20, 30, 30))], truths)
    assert ap == pytest.approx(0.5 * (2 / 3) + 0.5 * (2 / 3))
    # a duplicate of a found object is a false positive; a miss caps recall
    assert average_precision([(0.9, (0, 0, 10, 10)), (0.8, (0, 0, 10, 10))], truths) == pytest.approx(0.5)
    assert np.isnan(average_precision([(0.9, (0, 0, 1, 1))], []))
