"""The whole view's class and a share agree with the tiles they summarise (core/summaries.py)."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.records import ClassRecord
from rs_vlm_plugin.core.summaries import subject_share, whole_view_classes


def _tiles(labels: list[str]) -> list[ClassRecord]:
    return [ClassRecord(label, 0.9, label, "object", 2, Extent(k, 0, k + 1, 1), 1.0, "scene")
            for k, label in enumerate(labels)]


def test_the_whole_view_is_the_class_of_most_of_its_tiles_and_says_when_the_image_differs():
    records = _tiles(["forest"] * 12 + ["bare soil"] * 3 + ["road"])
    scene, note = whole_view_classes(["forest", "bare soil", "road", "water"], records, [("bare soil", 0.41)])
    assert scene == [("forest", 0.75), ("bare soil", 0.1875), ("road", 0.0625)]
    assert "bare soil (0.41)" in note and "75% of its area is tiles of forest" in note
    same, quiet = whole_view_classes(["forest", "road"], records[:12], [("forest", 0.8)])
    assert same == [("forest", 1.0)] and quiet == ""


def test_a_share_counts_only_tiles_where_the_subject_wins():
    fine = [(0.9, 0), (0.8, 1), (0.7, 2), (0.1, 3)]  # presence of "forest" per tile; tile 3 fails
    areas = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    best = np.array([0, 0, 1, 0])  # tile 2 passes but looks more like a freeway
    share, counted, answer = subject_share("forest", fine, areas, best, ["forest", "freeway"], 0.22)
    assert share == pytest.approx(0.5) and counted == [0, 1]
    assert answer.startswith("About 50 % of the area looks like forest (2 of 4 fine tiles")
    assert "1 more pass but look more like another class: 1 freeway" in answer
