"""The caption-grounding lexicon (resources/grounding.json) and its scores against references."""

from __future__ import annotations

import json

from rs_vlm_plugin.core.jobs.grounding import LEXICON_PATH, lexicon, named_things


def test_each_word_names_one_thing_and_is_one_decoder_word():
    groups = lexicon()
    words = [w for forms in groups.values() for w in forms]
    assert len(words) == len(set(words)), "a word in two things"
    assert all(w == w.lower() and " " not in w for w in words), "decoder words are single lower-case tokens"
    assert len(groups) >= 30
    assert "about" in json.loads(LEXICON_PATH.read_text(encoding="utf-8"))


def test_named_things_reads_words_not_substrings():
    groups = lexicon()
    assert named_things("A river with a road on one bank.", groups) == {"river", "road"}
    assert named_things("Many green trees are planted in rows.", groups) == set()  # "rows" is not "road"
    assert named_things("Two villas beside a pond, and boats.", groups) == {"villa", "pond", "ship"}


def test_unsupported_things_are_counted_against_the_references():
    from rs_vlm_train.grounding_eval import choose_cut, grounding_scores, reference_things

    truth = reference_things([["a dense forest with a road through it", "trees and a road"],
                              ["many buildings and cars in a parking lot"]])
    assert truth == [{"forest", "road"}, {"building", "car", "parking lot"}]
    got = grounding_scores(["A forest next to a river.", "Cars in a parking lot."], truth)
    assert got["things_named"] == 4
    assert got["unsupported_things"] == 25.0  # the river
    assert got["captions_with_unsupported"] == 50.0
    rows = {"0": {"reference_things_kept": 100.0, "unsupported_things": 9.0},
            "4": {"reference_things_kept": 70.0, "unsupported_things": 3.0},
            "8": {"reference_things_kept": 92.0, "unsupported_things": 6.0},
            "12": {"reference_things_kept": 95.0, "unsupported_things": 6.0}}
    assert choose_cut(rows) == 12  # the fewest unsupported of the cuts keeping 90 %; ties: the wider cut
    assert choose_cut(rows, min_kept=99.0) == 0
