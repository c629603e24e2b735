"""Answers about a whole view that agree with the tiles they summarise.

Classify's class of the whole view is the class that covers most of its fine tiles (by area), so
it never names a class that few of the listed tiles carry; where the view seen as one image looks
like something else, a note says so. Ask's "how much of the area is X?" counts a fine tile for X
only when X passes the presence threshold there *and* X scores above every scene class of the
knowledge base, as Classify would label that tile; tiles that pass but look more like another
class are named in the answer, so "100 % forest" cannot come from a scene that a road crosses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .expansion import expand_queries
from .records import ClassRecord

SCENE_TOP = 3
"""Classes listed for the whole view."""


def whole_view_classes(classes: Sequence[str], records: Sequence[ClassRecord],
                       view_as_image: Sequence[tuple[str, float]]) -> tuple[list[tuple[str, float]], str]:
    """The whole view's classes from its fine tiles, each with the share of their area it covers.

    Args:
        classes: The class list.
        records: The fine tiles' labels (they tile the view once).
        view_as_image: The global tile's own best classes, ``(name, probability)``.

    Returns:
        Up to :data:`SCENE_TOP` ``(class, area share)`` pairs, largest first (the same shares as
        ``ClassifyResult.shares``), and a note ("" when none) when the view seen as one image
        looks most like another class.
    """
    areas = {name: 0.0 for name in classes}
    for record in records:
        areas[record.label] += record.extent.width * record.extent.height
    total = sum(areas.values())
    if total <= 0:
        return list(view_as_image[:SCENE_TOP]), ""
    ranked = sorted(((name, area / total) for name, area in areas.items() if area > 0), key=lambda kv: -kv[1])
    scene = ranked[:SCENE_TOP]
    note = ""
    if view_as_image and view_as_image[0][0] != scene[0][0]:
        name, prob = view_as_image[0]
        note = (f"Seen as one image, the whole view looks most like {name} ({prob:.2f}), but {scene[0][1]:.0%} of "
                f"its area is tiles of {scene[0][0]}; the whole view's class is that of its tiles.")
    return scene, note


def subject_wins(bundle, subject: str, embeddings: np.ndarray, rivals: Sequence[str], prompts: Sequence[str],
                 knowledge: bool) -> tuple[np.ndarray, list[str]]:
    """For each tile, the class it looks most like among the subject and the rival classes.

    Scored as Classify scores the default class list (prompt ensembles, knowledge parts when
    ``knowledge``, no stacking correction), so the two jobs label a tile alike.

    Returns:
        ``(best, names)``: the index into ``names`` of each row's best class, and the names
        (the subject first, then the rivals other than the subject).
    """
    names = [subject] + [r for r in rivals if r.strip().lower() != subject.strip().lower()]
    scores = expand_queries(bundle, names, prompts, knowledge=knowledge).scores(embeddings)
    return np.argmax(scores, axis=1), names


def subject_share(subject: str, fine: Sequence[tuple[float, int]], areas: dict[int, float], best: np.ndarray,
                  names: Sequence[str], threshold: float) -> tuple[float, list[int], str]:
    """The share of the area that is ``subject``, with the tiles counted and the answer's sentence.

    Args:
        fine: ``(presence score, tile row)`` of each fine tile.
        areas: Each tile row's area.
        best: Per entry of ``fine``, the index into ``names`` of its best class (:func:`subject_wins`).
        names: The subject first, then its rivals.
        threshold: The presence threshold.

    Returns:
        ``(share, rows counted, answer)``.
    """
    total = sum(areas[i] for _, i in fine) or 1.0
    passing = [(k, i) for k, (score, i) in enumerate(fine) if score >= threshold]
    counted = [i for k, i in passing if best[k] == 0]
    elsewhere: dict[str, int] = {}
    for k, _ in passing:
        if best[k] != 0:
            elsewhere[names[best[k]]] = elsewhere.get(names[best[k]], 0) + 1
    share = sum(areas[i] for i in counted) / total
    answer = (f"About {100 * share:.0f} % of the area looks like {subject} ({len(counted)} of {len(fine)} fine tiles "
              f"pass the threshold {threshold:.2f} and look more like {subject} than any other scene class")
    if elsewhere:
        others = ", ".join(f"{n} {name}" for name, n in sorted(elsewhere.items(), key=lambda kv: -kv[1])[:3])
        answer += f"; {sum(elsewhere.values())} more pass but look more like another class: {others}"
    return float(share), counted, answer + ")."
