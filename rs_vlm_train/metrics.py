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


def scene_accuracy(img: np.ndarray, class_emb: np.ndarray, labels: np.ndarray) -> float:
    """Zero-shot accuracy (percent): each image takes the class of its most similar text."""
    return float(100 * np.mean(np.argmax(img @ class_emb.T, axis=1) == labels))


def object_retrieval(box_emb: np.ndarray, box_labels: list[str], query_emb: np.ndarray, queries: list[str],
                     k: int = 10) -> dict:
    """Text-to-box retrieval over a pool of boxes, one query per class.

    Returns, in percent: ``p@k`` (share of the k best boxes that are of the queried class,
    averaged over queries), ``hit@k`` (queries with at least one right box in the k best)
    and ``mAP`` (mean average precision over the whole ranking).
    """
    labels = np.asarray(box_labels)
    sims = query_emb @ box_emb.T
    p_at_k, hits, aps = [], [], []
    for q, name in enumerate(queries):
        order = np.argsort(-sims[q])
        right = labels[order] == name
        if not right.any():
            continue
        p_at_k.append(right[:k].mean())
        hits.append(right[:k].any())
        cum = np.cumsum(right)
        aps.append(float(np.sum(cum[right] / (np.flatnonzero(right) + 1)) / right.sum()))
    return {f"p@{k}": float(100 * np.mean(p_at_k)), f"hit@{k}": float(100 * np.mean(hits)),
            "mAP": float(100 * np.mean(aps)), "queries": len(p_at_k), "boxes": int(len(labels))}


def caption_scores(references: dict[str, list[str]], hypotheses: dict[str, str], meteor: bool = True) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr with pycocoevalcap (PTB tokenizer; needs Java).

    Scores are fractions as pycocoevalcap returns them (multiply by 100 for the published tables).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    refs = tok.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    hyps = tok.tokenize({k: [{"caption": hypotheses[k]}] for k in references})
    out = {}
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)
    out.update({f"BLEU-{i + 1}": float(b) for i, b in enumerate(bleu)})
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        out["METEOR"] = float(scorer.compute_score(refs, hyps)[0])
        del scorer
    out["ROUGE-L"] = float(Rouge().compute_score(refs, hyps)[0])
    out["CIDEr"] = float(Cider().compute_score(refs, hyps)[0])
    return out
