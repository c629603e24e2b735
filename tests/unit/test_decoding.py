"""Beam search over a hand-made next-word table (no model): the search itself is under test."""

from __future__ import annotations

import numpy as np

from rs_vlm_plugin.core.decoding import BOS, EOS, as_sentence, beam_search, detokenize

VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "forest", "river", "dense"]


def _table_step(table: dict[tuple[int, ...], dict[int, float]]):
    """Step function from {prefix: {token: probability}}; unlisted prefixes end the caption."""

    def step(rows, prefixes):
        out = np.full((len(rows), len(VOCAB)), -1e9)
        for k, prefix in enumerate(prefixes):
            probs = table.get(tuple(int(t) for t in prefix), {EOS: 1.0})
            for tok, p in probs.items():
                out[k, tok] = np.log(p)
        return out

    return step


def test_beam_finds_the_sequence_greedy_misses():
    # Greedy takes "a" (0.6) then has only weak continuations; "dense forest" is better overall.
    table = {(BOS,): {4: 0.6, 7: 0.4},
             (BOS, 4): {5: 0.3, 6: 0.3, 3: 0.4},
             (BOS, 7): {5: 0.99, 6: 0.01},
             (BOS, 4, 5): {EOS: 1.0}, (BOS, 4, 6): {EOS: 1.0}, (BOS, 7, 5): {EOS: 1.0}}
    greedy = beam_search(_table_step(table), 1, beam=1)[0]
    best = beam_search(_table_step(table), 1, beam=3)[0]
    assert detokenize(best, VOCAB) == "dense forest"
    assert detokenize(greedy, VOCAB) in {"a forest", "a river"}  # <unk> is never emitted


def test_each_image_gets_its_own_caption_and_length_is_bounded():
    def step(rows, prefixes):
        out = np.full((len(rows), len(VOCAB)), -5.0)
        for k, (row, prefix) in enumerate(zip(rows, prefixes)):
            out[k, 5 if row == 0 else 6] = 0.0  # image 0 says "forest" forever, image 1 "river"
        return out

    caps = beam_search(step, 2, beam=2, max_len=4)
    assert [set(detokenize(c, VOCAB).split()) for c in caps] == [{"forest"}, {"river"}]
    assert all(len(c) <= 4 for c in caps)


def test_sentence_formatting():
    assert as_sentence("a dense forest") == "A dense forest."
    assert as_sentence("") == ""
    assert detokenize([1, 4, 5, 2, 0], VOCAB) == "a forest"


def test_banned_words_are_never_written_and_the_next_best_is():
    # "river" is the likelier word, but this image's grounding bans it: the caption says "forest".
    table = {(BOS,): {4: 1.0}, (BOS, 4): {6: 0.7, 5: 0.3}, (BOS, 4, 5): {EOS: 1.0}, (BOS, 4, 6): {EOS: 1.0}}
    banned = np.zeros((2, len(VOCAB)), bool)
    banned[0, 6] = True  # image 0 may not say "river"; image 1 may
    out = beam_search(_table_step(table), 2, beam=3, banned=banned)
    assert [detokenize(s, VOCAB) for s in out] == ["a forest", "a river"]
