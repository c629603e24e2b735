"""Beam search over a caption decoder, in numpy (the decoder itself is any step function)."""

from __future__ import annotations

from typing import Callable

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3

# step(rows, tokens) -> logits: ``rows`` (n,) picks each hypothesis' image, ``tokens`` (n, t)
# its prefix starting with BOS; returns (n, vocab) logits of the next token.
StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def beam_search(step: StepFn, n_images: int, beam: int = 3, max_len: int = 24, length_penalty: float = 0.0,
                min_len: int = 2, banned: np.ndarray | None = None) -> list[list[int]]:
    """The best token sequence (without BOS/EOS) for each of ``n_images``.

    Hypotheses of all images are decoded together, one step call per position.  Scores are
    summed log-probabilities divided by ``len ** length_penalty`` when a hypothesis ends.

    Args:
        banned: (n_images, vocab) bool, tokens an image's sequence may not contain (grounding).
    """
    beams = [[(0.0, [BOS])] for _ in range(n_images)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_images)]
    for t in range(max_len):
        rows, prefixes, owners = [], [], []
        for i, hyps in enumerate(beams):
            for score, seq in hyps:
                rows.append(i)
                prefixes.append(seq)
                owners.append((i, score, seq))
        if not rows:
            break
        logp = _log_softmax(step(np.asarray(rows, np.int64), np.asarray(prefixes, np.int64)).astype(np.float64))
        logp[:, PAD] = -np.inf
        logp[:, BOS] = -np.inf
        logp[:, UNK] = -np.inf
        if banned is not None:
            logp[:, :banned.shape[1]][banned[np.asarray(rows)]] = -np.inf
        if t < min_len:
            logp[:, EOS] = -np.inf
        candidates: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_images)]
        for k, (i, score, seq) in enumerate(owners):
            best = np.argpartition(-logp[k], beam)[:beam]
            for tok in best:
                candidates[i].append((score + float(logp[k, tok]), seq + [int(tok)]))
        new_beams = []
        for i, cands in enumerate(candidates):
            cands.sort(key=lambda c: -c[0])
            keep = []
            for score, seq in cands:
                if seq[-1] == EOS:
                    finished[i].append((score / max(1, len(seq) - 2) ** length_penalty, seq[1:-1]))
                else:
                    keep.append((score, seq))
                if len(keep) == beam:
                    break
            # Stop an image once its best finished hypothesis beats every open one.
            if finished[i] and keep and max(f[0] for f in finished[i]) >= keep[0][0]:
                keep = []
            new_beams.append(keep)
        beams = new_beams
    out = []
    for i in range(n_images):
        pool = finished[i] or [(s, seq[1:]) for s, seq in beams[i]]
        out.append(max(pool, key=lambda c: c[0])[1] if pool else [])
    return out


def detokenize(ids: list[int], vocab: list[str]) -> str:
    """Words of a token sequence joined by spaces (special tokens dropped)."""
    return " ".join(vocab[i] for i in ids if i > UNK and i < len(vocab))


def as_sentence(text: str) -> str:
    """Capitalised sentence with a full stop, for display."""
    text = text.strip()
    return text[:1].upper() + text[1:] + "." if text else ""
