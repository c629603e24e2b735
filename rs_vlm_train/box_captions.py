"""RemoteCLIP's box-to-caption idea: sentences for images and windows from their detection boxes.

VHR-10's boxes say what objects an image holds and where; counted per class they become a
scene sentence for the whole image ("an aerial image of an airport apron with five airplanes
and two storage tanks.") and region sentences for the windows the boxes fall in.
"""

from __future__ import annotations

from collections import Counter

NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Object class -> (phrase for one, phrase for several with {n}); the scene-like context of
# each class is part of its phrase, as in RemoteCLIP's box-to-caption sentences.
PHRASES = {
    "airplane": ("an airplane parked on an airport apron", "an airport apron with {n} airplanes"),
    "ship": ("a ship docked in a harbor", "{n} ships docked in a harbor"),
    "storage tank": ("a round storage tank", "{n} round oil storage tanks"),
    "baseball diamond": ("a baseball diamond", "{n} baseball diamonds"),
    "tennis court": ("a tennis court", "{n} tennis courts"),
    "basketball court": ("a basketball court", "{n} basketball courts"),
    "ground track field": ("a running track around a football field", "{n} running tracks around football fields"),
    "harbor": ("a harbor with piers", "a harbor with {n} piers"),
    "bridge": ("a bridge across a river", "{n} bridges across a river"),
    "vehicle": ("a vehicle on a road", "{n} vehicles on the roads"),
}


def count_word(n: int) -> str:
    """A count in words ("five"), "many" above ten."""
    return NUMBERS[n] if n < len(NUMBERS) else "many"


def object_phrases(labels: list[str]) -> list[str]:
    """One phrase per object class present, the most frequent first (ties by name)."""
    counts = Counter(labels)
    out = []
    for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        one, many = PHRASES.get(label, (f"a {label}", f"{{n}} {label}s"))
        out.append(one if n == 1 else many.format(n=count_word(n)))
    return out


def box_sentence(labels: list[str]) -> str | None:
    """A sentence for an image or window holding objects of these classes; None when empty."""
    phrases = object_phrases(labels)
    if not phrases:
        return None
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"an aerial image of {listed}."


def window_labels(boxes: list[tuple[str, tuple[float, float, float, float]]],
                  windows: list[tuple[float, float, float, float]]) -> list[list[str]]:
    """The labels of the boxes whose centre falls in each window (all in image fractions x0, y0, x1, y1)."""
    out = []
    for wx0, wy0, wx1, wy1 in windows:
        inside = []
        for label, (x0, y0, x1, y1) in boxes:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if wx0 <= cx < wx1 and wy0 <= cy < wy1:
                inside.append(label)
        out.append(inside)
    return out


def region_windows(grids: tuple[int, ...] = (2, 3)) -> list[tuple[float, float, float, float]]:
    """The model's region windows in tile fractions: 2x2 quadrants, then the 3x3 grid, row-major."""
    out = []
    for g in grids:
        for r in range(g):
            for c in range(g):
                out.append((c / g, r / g, (c + 1) / g, (r + 1) / g))
    return out
