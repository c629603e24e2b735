"""Calibrated stacking (core/seen_bias.py): familiarity, offsets and the manifest entry."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.seen_bias import SeenBias, familiarity, stacking_offsets


def _unit(*rows):
    a = np.asarray(rows, np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_a_trained_class_is_fully_familiar_and_a_new_one_less():
    trained = _unit([1, 0, 0], [0, 1, 0])
    classes = _unit([1, 0, 0], [1, 1, 0], [0, 0, 1], [-1, 0, 0])
    fam = familiarity(classes, trained)
    assert fam == pytest.approx([1.0, np.sqrt(0.5), 0.0, 0.0], abs=1e-6)  # negative similarity clips to 0
    assert familiarity(classes, np.zeros((0, 3), np.float32)).tolist() == [0.0] * 4


def test_offsets_leave_a_list_of_trained_classes_ranked_as_before_and_lift_new_ones():
    trained = _unit([1, 0, 0], [0, 1, 0])
    classes = _unit([1, 0, 0], [0, 1, 0], [0.6, 0.4, 0.7])  # two trained classes and a new one
    off = stacking_offsets(familiarity(classes, trained), 0.3)
    scores = np.asarray([[0.50, 0.20, 0.45], [0.10, 0.60, 0.30]], np.float32)
    assert off[0] == off[1] == pytest.approx(-0.3)
    assert np.argmax(scores, 1).tolist() == [0, 1]
    assert np.argmax(scores + off, 1).tolist() == [2, 1]  # the new class wins where it was close
    assert np.argsort(-(scores + off)[:, :2], 1).tolist() == np.argsort(-scores[:, :2], 1).tolist()


@pytest.mark.parametrize("entry, gamma, active", [
    (None, 0.0, False),
    ({"gamma": 0.3, "trained_classes": ["forest", "river"]}, 0.3, True),
    ({"gamma": 0.3, "trained_classes": []}, 0.3, False),
    ({"gamma": 0.0, "trained_classes": ["forest"]}, 0.0, False),
])
def test_manifest_entry(entry, gamma, active):
    bias = SeenBias.from_manifest({} if entry is None else {"seen_bias": entry})
    assert bias.gamma == gamma and bias.active is active


@pytest.mark.parametrize("entry", [{"gamma": 1.5, "trained_classes": ["a"]}, {"gamma": "x"},
                                   {"gamma": 0.2, "trained_classes": "forest"}, {"gamma": 0.2, "trained_classes": [3]},
                                   "not a mapping"])
def test_a_damaged_manifest_entry_is_a_sentence(entry):
    with pytest.raises(RsVlmError, match="seen_bias"):
        SeenBias.from_manifest({"seen_bias": entry})


def test_familiarity_message_names_the_nearest_concepts_only_when_low():
    from rs_vlm_plugin.core.seen_bias import FAMILIAR_THRESHOLD, Familiarity

    low = Familiarity("railway station", FAMILIAR_THRESHOLD - 0.1, ("industrial area", "parking lot"))
    high = Familiarity("forest", 1.0, ("forest",))
    assert not low.familiar and high.familiar and high.message == ""
    assert low.message.startswith("RS-VLM has seen little like 'railway station'")
    assert "nearest learnt concepts: industrial area, parking lot." in low.message
