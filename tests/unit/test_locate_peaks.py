"""Blobs of relevant cells split at their local maxima: neighbouring objects get one box each."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.locate.metrics import box_iou
from rs_vlm_plugin.core.locate.peaks import log_odds, split_blob
from rs_vlm_plugin.core.locate.vectorise import CellGrid, vectorise


def cells_of(values: np.ndarray, cell: float = 10.0):
    """(bounds, values) of the cells of a map at least 0.5 relevant, row 0 to the north of a 0..W x 0..H window."""
    rows, cols = values.shape
    bounds, kept = [], []
    for r, c in zip(*np.nonzero(values >= 0.5)):
        bounds.append((c * cell, (rows - r - 1) * cell, (c + 1) * cell, (rows - r) * cell))
        kept.append(values[r, c])
    return np.array(bounds), np.array(kept)


def two_tanks() -> np.ndarray:
    """Two bumps of relevance side by side, joined into one blob by the cells between them."""
    values = np.zeros((5, 9))
    values[1:4, 1:8] = 0.99
    values[2, 2] = 0.99999  # the west tank's centre cell
    values[2, 6] = 0.9999  # the east one's
    return values


def test_two_touching_objects_give_two_boxes_of_the_class_size():
    bounds, values = cells_of(two_tanks())
    peaks = split_blob(bounds, values, size=(30.0, 30.0))
    assert len(peaks) == 2
    west, east = sorted(peaks, key=lambda p: p.bounds[0])
    assert west.bounds == pytest.approx((10, 10, 40, 40), abs=6) and east.bounds[0] > west.bounds[2] - 15
    assert west.score > east.score  # the better peak keeps its own score
    assert sum(p.cells for p in peaks) == len(values)  # every cell went to one of them


def test_without_a_size_each_peak_gets_the_box_of_its_cells():
    bounds, values = cells_of(two_tanks())
    peaks = split_blob(bounds, values)
    assert len(peaks) == 2
    union = (min(p.bounds[0] for p in peaks), min(p.bounds[1] for p in peaks), max(p.bounds[2] for p in peaks),
             max(p.bounds[3] for p in peaks))
    assert union == pytest.approx((10, 10, 80, 40))


def test_peaks_closer_than_the_separation_are_one_object():
    bounds, values = cells_of(two_tanks())
    assert len(split_blob(bounds, values, size=(100.0, 100.0))) == 1  # 40 units apart < half of 100


def test_one_cell_blob_is_one_box_centred_on_it():
    (peak,) = split_blob(np.array([(0, 0, 10, 10)]), np.array([0.995]), size=(4.0, 6.0))
    assert peak.bounds == pytest.approx((3, 2, 7, 8)) and peak.cells == 1


def test_log_odds_orders_probabilities_near_one():
    odds = log_odds(np.array([0.99, 0.9999, 0.999999]))
    assert odds[0] < odds[1] < odds[2]


def test_vectorise_with_a_size_prior_splits_the_blob_and_matches_each_object():
    window = Extent(0, 0, 90, 50)
    values = two_tanks()
    found = vectorise([CellGrid(window, window, values)], threshold=0.5, size=(30.0, 30.0))
    assert [o.shape for o in found] == ["box", "box"]
    truths = [(10, 10, 40, 40), (50, 10, 80, 40)]
    for truth in truths:
        assert max(box_iou(o.bounds, truth) for o in found) >= 0.5
    # without the prior it is one blob whose box matches neither object
    (blob,) = vectorise([CellGrid(window, window, values)], threshold=0.5)
    assert all(box_iou(blob.bounds, t) < 0.5 for t in truths)
