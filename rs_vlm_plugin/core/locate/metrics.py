"""Scores of outlines against ground-truth boxes: IoU and average precision (bench-locate, tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def average_precision(detections: Sequence[tuple[float, tuple[float, float, float, float]]],
                      truths: Sequence[tuple[float, float, float, float]], iou: float = 0.5) -> float:
    """Box AP at an IoU threshold (all-point interpolated, as PASCAL VOC 2010+).

    Args:
        detections: (score, box) pairs.
        truths: Ground-truth boxes; each matches at most one detection (the best-scored first).

    Returns:
        The AP in [0, 1]; NaN without ground truth.
    """
    if not truths:
        return math.nan
    order = sorted(detections, key=lambda d: -d[0])
    taken = [False] * len(truths)
    hits = []
    for _, candidate in order:
        best, best_j = iou, -1
        for j, truth in enumerate(truths):
            if not taken[j]:
                value = box_iou(candidate, truth)
                if value >= best:
                    best, best_j = value, j
        if best_j >= 0:
            taken[best_j] = True
        hits.append(best_j >= 0)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1) if hits else np.zeros(0)
    recall = tp / len(truths) if hits else np.zeros(0)
    # Precision envelope, then the area under the recall steps.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
