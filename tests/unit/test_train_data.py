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


def test_aid_pairs_by_lower_case_name_keeps_distinct_sentences_and_holds_back_by_hash(tmp_path):
    from PIL import Image

    from rs_vlm_train.aid import aid_held_out, read_aid
    from rs_vlm_train.classes import group, leave_out_choice, readable

    text = tmp_path / "captions_text"
    text.mkdir()
    names, caps = [], []
    for k in range(40):
        folder = ("BareLand", "Port")[k % 2]
        label = folder.lower()
        path = tmp_path / "aid" / "images" / folder / f"{label}_{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path)
        names.append(f"{label.upper() if k == 0 else label}_{k}.jpg")  # pairing ignores case
        caps += [f"one {label} ."] * 4 + [f"two {label} ."] if k % 3 else [f"{label} {j} ." for j in range(5)]
    (text / "rsicd_train_caps.txt").write_text("\n".join(caps) + "\n")
    (text / "rsicd_train_filename.txt").write_text("\n".join(names) + "\n")
    items = read_aid(tmp_path)
    assert len(items) == 40 and items[0].label == "bareland" and readable("bareland") == "bare land"
    one = next(i for i in items if i.path.name == "bareland_2.jpg")
    assert one.sentences == ["one bareland .", "two bareland ."]  # one sentence four times counts once
    assert len(next(i for i in items if i.path.name == "bareland_0.jpg").sentences) == 5
    held = aid_held_out(items)
    assert 0 < len(held) < 12 and held == aid_held_out(items[::-1])  # by name, not by order
    assert group("aid", "port") == "harbor"  # AID's port is the harbour concept of UCM and VHR-10
    choice = leave_out_choice(["forest", "harbor"], ["desert"], n_ucm=1, n_resisc=1, aid_classes=["bareland", "port"],
                              n_aid=1)
    assert choice["aid"] == ["bareland"] and "bareland" in choice["groups"]  # port shares UCM's harbor: not drawn
