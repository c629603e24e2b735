"""Question parsing, presence scores and threshold calibration (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.qa import calibrate_threshold, parse_question, pool_objects, presence_scores


@pytest.mark.parametrize("text, kind, subject", [
    ("Is there a storage tank?", "presence", "storage tank"),
    ("are there any boats in this area", "presence", "boats"),
    ("Any airplanes?", "presence", "airplanes"),
    ("What is this area?", "scene", ""),
    ("what's here", "scene", ""),
    ("Where is the river?", "where", "river"),
    ("where are the tennis courts", "where", "tennis courts"),
    ("find parking lots", "where", "parking lots"),
    ("How much of the area is forest?", "share", "forest"),
    ("what percentage is water", "share", "water"),
    ("What share of the image is farmland?", "share", "farmland"),
])
def test_questions_are_recognised(text, kind, subject):
    q = parse_question(text)
    assert (q.kind, q.subject) == (kind, subject)
    assert q.text == text


@pytest.mark.parametrize("text", ["", "   ", "tell me a story", "is there"])
def test_unknown_or_empty_questions_are_sentences(text):
    with pytest.raises(RsVlmError) as err:
        parse_question(text)
    assert err.value.args[0].endswith(".")


def test_presence_is_the_best_token_of_each_tile():
    d = 4
    query = np.array([1.0, 0, 0, 0])
    g = np.zeros((2, d))
    r = np.zeros((2, 13, d))
    r[0, 5, 0] = 0.7   # tile 0: one region matches
    g[1, 0] = 0.9      # tile 1: the whole tile matches
    scores = presence_scores(g, r, query)
    assert scores.tolist() == pytest.approx([0.7, 0.9])
    assert pool_objects(np.zeros((2, 16, d)), 4).shape == (2, 4, d)


def test_contrastive_presence_needs_the_query_to_beat_every_other_concept():
    query = np.array([1.0, 0, 0])
    synonym = np.array([0.95, np.sqrt(1 - 0.95 ** 2), 0])  # the query's family: counts with it
    other = np.array([0, 1.0, 0])
    g = np.array([[0.2, 0.98, 0.0],   # closer to the other concept than to the query (family)
                  [0.8, 0.6, 0.0]])   # closer to the query
    r = np.repeat(g[:, None], 13, axis=1)  # uniform tiles: every window sees the same
    scores = presence_scores(g, r, query, np.stack([synonym, other]), logit_scale=20.0)
    assert scores[0] < 0.5 < scores[1] <= 1.0
    # A family member is not an alternative: with only it, every token is the query's.
    alone = presence_scores(g, r, query, synonym[None], logit_scale=20.0)
    assert np.allclose(alone, 1.0)


def test_calibration_picks_the_separating_threshold():
    scores = np.array([0.1, 0.2, 0.25, 0.4, 0.45, 0.5])
    positive = np.array([0, 0, 0, 1, 1, 1], bool)
    t, acc = calibrate_threshold(scores, positive)
    assert 0.25 < t < 0.4 and acc == 1.0
    with pytest.raises(ValueError):
        calibrate_threshold(scores, np.ones(6, bool))
