"""Splitting a blob of relevant cells into objects: one box per local maximum of the relevance map.

Neighbouring objects (storage tanks in a tank farm, aircraft on an apron) give one connected blob
of relevant cells, and its bounding box matches none of them. Each blob is therefore split at its
local maxima: a cell is a peak when no cell among its eight neighbours is more relevant; peaks
closer than ``separation`` to a better one are dropped (they are the same object); every cell goes
to its nearest peak (a watershed on the cell centres). A peak's box is the bounding box of its
cells, or, when the query names an object class with a known size (:mod:`.sizes`), a box of that
size centred on the relevance-weighted centre of its cells: an object is often smaller than one
cell of the object grid (16 native pixels), and the size of the class says more about it than the
cells do.

Pure numpy; relevance is compared in log-odds, where probabilities near 1 still differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-7


@dataclass(frozen=True)
class Peak:
    """One object found in a blob.

    Attributes:
        bounds: (xmin, ymin, xmax, ymax) of its box, in map units.
        score: The relevance of its peak cell.
        mean_score: The mean relevance of its cells.
        cells: How many cells went to it.
    """

    bounds: tuple[float, float, float, float]
    score: float
    mean_score: float
    cells: int


def log_odds(values: np.ndarray) -> np.ndarray:
    """Relevance as log-odds (clipped), so that 0.9999 and 0.99999 still order."""
    p = np.clip(np.asarray(values, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def split_blob(bounds: np.ndarray, values: np.ndarray, size: tuple[float, float] | None = None,
               separation: float | None = None) -> list[Peak]:
    """The objects of one blob, best first.

    Args:
        bounds: (M, 4) cells as (xmin, ymin, xmax, ymax), in map units.
        values: (M,) their relevance.
        size: (width, height) of the object class in map units, or None (boxes from the cells).
        separation: Peaks closer than this (map units, centre to centre) are one object; default
            half the class size's shorter side, else 1.5 cells.

    Returns:
        One :class:`Peak` per object (at least one for a non-empty blob).
    """
    bounds = np.asarray(bounds, np.float64).reshape(-1, 4)
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return []
    centres = np.stack([(bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2], axis=1)
    side = np.minimum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
    odds = log_odds(values)
    # Peaks: no neighbour (centre within 1.5 cells in x and y) is more relevant; ties go to the first.
    dx = np.abs(centres[:, None, 0] - centres[None, :, 0])
    dy = np.abs(centres[:, None, 1] - centres[None, :, 1])
    reach = 1.01 * np.maximum(side[:, None], side[None, :])
    near = (dx <= reach) & (dy <= reach)
    order = np.lexsort((np.arange(len(odds)), -odds))  # best first, ties by index
    rank = np.empty(len(odds), int)
    rank[order] = np.arange(len(odds))
    better = near & (rank[None, :] < rank[:, None])
    candidates = [int(i) for i in order if not better[int(i)].any()]
    if separation is None:
        separation = 0.5 * min(size) if size else 1.5 * float(np.median(side))
    kept: list[int] = []
    for i in candidates:
        if all(np.hypot(*(centres[i] - centres[k])) >= separation for k in kept):
            kept.append(i)
    # Every cell to its nearest peak.
    dist = np.hypot(centres[:, None, 0] - centres[None, kept, 0], centres[:, None, 1] - centres[None, kept, 1])
    owner = np.argmin(dist, axis=1)
    peaks = []
    for k, i in enumerate(kept):
        mine = np.nonzero(owner == k)[0]
        if size:
            weights = odds[mine] - odds[mine].min() + 1.0
            cx, cy = np.average(centres[mine], axis=0, weights=weights)
            # the centre stays within the peak's cells' box
            cx = float(np.clip(cx, bounds[mine, 0].min(), bounds[mine, 2].max()))
            cy = float(np.clip(cy, bounds[mine, 1].min(), bounds[mine, 3].max()))
            box = (cx - size[0] / 2, cy - size[1] / 2, cx + size[0] / 2, cy + size[1] / 2)
        else:
            box = (float(bounds[mine, 0].min()), float(bounds[mine, 1].min()), float(bounds[mine, 2].max()),
                   float(bounds[mine, 3].max()))
        peaks.append(Peak(box, float(values[i]), float(values[mine].mean()), len(mine)))
    return peaks
