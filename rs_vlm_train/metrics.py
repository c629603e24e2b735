"""Retrieval metrics with the UCM-captions protocol."""

from __future__ import annotations

import numpy as np


def retrieval_recalls(img: np.ndarray, txt: np.ndarray, captions_per_image: int = 5) -> dict:
    """Image->text and text->image R@1/5/10 and their mean (percent).

    Args:
        img: (N, D) normalised image embeddings.
        txt: (N * captions_per_image, D) normalised caption embeddings, image i's captions at
            rows i*k .. i*k+k-1 (no deduplication).
    """
    sims = img @ txt.T
    n = img.shape[0]
    owner = np.arange(txt.shape[0]) // captions_per_image
    # image -> text: rank of the best-ranked own caption
    order = np.argsort(-sims, axis=1)
    i2t_rank = np.array([np.where(owner[order[i]] == i)[0].min() for i in range(n)])
    # text -> image
    order_t = np.argsort(-sims.T, axis=1)
    t2i_rank = np.array([np.where(order_t[j] == owner[j])[0][0] for j in range(txt.shape[0])])
    out = {}
    for k in (1, 5, 10):
        out[f"i2t_r{k}"] = float(100 * np.mean(i2t_rank < k))
        out[f"t2i_r{k}"] = float(100 * np.mean(t2i_rank < k))
    out["mR"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]))
    return out
