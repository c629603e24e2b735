"""Leave-classes-out choice, caption truthfulness and box-to-caption sentences (rs_vlm_train, no torch)."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_train.box_captions import box_sentence, region_windows, window_labels
from rs_vlm_train.classes import (class_terms, generalised_zero_shot, group, knowledge_terms, leave_out_choice,
                                  names_class, truthfulness, weak_captions)

UCM = ["agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential", "forest",
       "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark", "overpass",
       "parkinglot", "river", "runway", "sparseresidential", "storagetanks", "tenniscourt"]
RESISC = ["beach", "commercial_area", "desert", "farmland", "forest", "industrial_area", "island", "lake", "mountain",
          "residential", "river", "wetland"]


def test_leave_out_choice_is_seeded_and_never_draws_a_class_both_datasets_share():
    first = leave_out_choice(UCM, RESISC, seed=0)
    assert first == leave_out_choice(list(reversed(UCM)), RESISC, seed=0)  # order of the input does not matter
    assert len(first["ucm"]) == 6 and len(first["resisc"]) == 3
    shared = {"farmland", "residential", "beach", "forest", "river"}
    assert not shared & set(first["groups"])
    assert leave_out_choice(UCM, RESISC, seed=1) != first


@pytest.mark.parametrize("source, label, expected", [
    ("ucm", "agricultural", "farmland"), ("resisc", "farmland", "farmland"), ("vhr", "storage tank", "storagetanks"),
    ("extra", "airplane", "airplane"), ("vhr", "ship", "harbor"), ("rsicd", "industrial", "industrial_area"),
    ("resisc", "desert", "desert"),
])
def test_one_group_per_concept_across_sources(source, label, expected):
    assert group(source, label) == expected


@pytest.mark.parametrize("caption, source, label, truthful", [
    ("many buildings and factories in an industrial zone", "resisc", "industrial_area", True),
    ("a piece of yellow desert with some dunes", "resisc", "desert", True),
    ("this is a chaparral", "resisc", "desert", False),
    ("several green mountains", "resisc", "mountain", True),
    ("a dense forest", "resisc", "mountain", False),
    ("there is a small islet in the sea", "resisc", "island", True),
    ("many mobile homes arranged neatly in the mobile home park", "resisc", "industrial_area", False),
    ("some beaches next to the sea", "resisc", "beach", True),
    ("lots of houses in a dense residential area", "ucm", "denseresidential", True),
    ("a marshland with reeds", "resisc", "wetland", True),
])
def test_truthfulness_names_the_class_or_a_knowledge_base_synonym(caption, source, label, truthful):
    assert names_class(caption, class_terms(source, label, knowledge_terms())) is truthful


def test_truthfulness_shares():
    report = truthfulness(["a yellow desert", "a dense forest", "green mountains", "a river"],
                          ["desert", "desert", "mountain", "mountain"], "resisc")
    assert report["truthful"] == pytest.approx(50.0)
    assert report["per_class"] == {"desert": 50.0, "mountain": 50.0}


def test_generalised_zero_shot_harmonic_mean():
    classes = ["a", "b", "c"]
    truth = np.asarray([0, 0, 1, 1, 2, 2])
    pred = np.asarray([0, 0, 1, 0, 0, 0])  # a: 100 %, b: 50 %, c (unseen): 0 %
    out = generalised_zero_shot(pred, truth, classes, {"c"})
    assert out["seen"] == pytest.approx(75.0) and out["unseen"] == 0.0 and out["H"] == 0.0
    out = generalised_zero_shot(pred, truth, classes, {"b"})
    assert out["seen"] == pytest.approx(50.0) and out["unseen"] == pytest.approx(50.0)
    assert out["H"] == pytest.approx(50.0)


def test_weak_captions_take_corpus_sentences_naming_the_class_templates_only_when_none_does():
    corpus = {"desert": [f"a yellow desert number {k}" for k in range(25)] + ["some dunes"],
              "industrial": ["a factory"] * 3,
              "beach": ["a beach next to a small island", "waves on a beach"]}
    weak = weak_captions(["desert", "industrial_area", "island", "wetland"], "resisc", corpus)
    assert len(weak["desert"]) == 25 and "some dunes" not in weak["desert"]  # only sentences naming the class
    assert weak["industrial_area"] == ["a factory"]  # few, but real: no template added
    assert weak["island"] == ["a beach next to a small island"]  # named in another class's sentences
    assert weak["wetland"] == ["this is a wetland", "there is a wetland in the image", "an aerial image of a wetland"]


@pytest.mark.parametrize("labels, sentence", [
    (["airplane"] * 5 + ["storage tank"] * 2,
     "an aerial image of an airport apron with five airplanes and two round oil storage tanks."),
    (["ship"], "an aerial image of a ship docked in a harbor."),
    (["ground track field"], "an aerial image of a running track around a football field."),
    (["bridge", "vehicle", "vehicle"], "an aerial image of two vehicles on the roads and a bridge across a river."),
    (["vehicle"] * 12, "an aerial image of many vehicles on the roads."),
    ([], None),
])
def test_box_sentences(labels, sentence):
    assert box_sentence(labels) == sentence


def test_boxes_fall_in_the_windows_of_their_centres():
    windows = region_windows()
    assert len(windows) == 13 and windows[0] == (0.0, 0.0, 0.5, 0.5) and windows[4] == (0.0, 0.0, 1 / 3, 1 / 3)
    boxes = [("ship", (0.1, 0.1, 0.2, 0.2)), ("bridge", (0.6, 0.6, 0.9, 0.9))]
    inside = window_labels(boxes, windows)
    assert inside[0] == ["ship"] and inside[3] == ["bridge"] and inside[1] == [] and inside[12] == ["bridge"]
