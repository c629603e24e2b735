"""Readers of training folders, on tiny folders the test writes."""

from __future__ import annotations

import pytest

pytest.importorskip("PIL")

from rs_vlm_train.data import held_out, read_object_boxes  # noqa: E402


def test_read_object_boxes(tmp_path):
    (tmp_path / "boxes").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "boxes" / "001.txt").write_text("(563,478),(630,573),1 \n(10, 20),(30,40),10\n\n")
    (tmp_path / "boxes" / "002.txt").write_text("(1,2),(3,4),3\n")
    boxes = read_object_boxes(tmp_path)
    assert [(b.image.name, b.x1, b.y1, b.x2, b.y2, b.label) for b in boxes] == [
        ("001.jpg", 563, 478, 630, 573, "airplane"), ("001.jpg", 10, 20, 30, 40, "vehicle"),
        ("002.jpg", 1, 2, 3, 4, "storage tank")]


def test_held_out_is_stable_and_near_the_fraction():
    keys = [f"img{i:04d}" for i in range(2000)]
    chosen = held_out(keys, 0.2, seed=0)
    assert 0.17 < len(chosen) / len(keys) < 0.23
    assert held_out(keys[::-1], 0.2, seed=0) == chosen  # order does not matter
    assert held_out(keys[:1000], 0.2, seed=0) == {k for k in chosen if k in set(keys[:1000])}
    assert held_out(keys, 0.2, seed=1) != chosen
