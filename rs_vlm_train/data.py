"""Readers for the training folders laid out like ``../shared/data`` (never copied into the repo)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class CaptionedImage:
    """One image with its reference captions."""

    path: Path
    label: str
    split: str
    sentences: list[str]


def read_captions(folder: Path, split: str | None = None) -> list[CaptionedImage]:
    """Images of a ``captions.json`` folder (UCM layout), optionally of one split."""
    folder = Path(folder)
    data = json.loads((folder / "captions.json").read_text(encoding="utf-8"))
    items = [CaptionedImage(folder / im["filename"], im.get("class", ""), im.get("split", ""),
                            [s.strip() for s in im["sentences"]]) for im in data["images"]]
    return [i for i in items if split is None or i.split == split]


def read_scene_folders(folder: Path) -> list[tuple[Path, str]]:
    """(image, class) pairs from one sub-folder per class; sorted for reproducibility."""
    pairs = []
    for class_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        for image in sorted(class_dir.iterdir()):
            if image.suffix.lower() in {".jpg", ".jpeg", ".png", ".tif", ".tiff"}:
                pairs.append((image, class_dir.name))
    return pairs


def load_image(path: Path) -> Image.Image:
    """An image file as an RGB PIL image."""
    with Image.open(path) as im:
        return im.convert("RGB")


def _resize(image: Image.Image, size: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    return np.asarray(image.resize((size, size), Image.BILINEAR, box=box, reducing_gap=2.0))


def _dihedral(rgb: np.ndarray, index: int) -> np.ndarray:
    base = rgb[:, ::-1] if index >= 4 else rgb
    return np.ascontiguousarray(np.rot90(base, index % 4))


def views(image: Image.Image, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` training views of an image at the model's input size.

    The first (up to) 8 are the dihedral views (rotations and flips) of the whole image; the
    rest are zoomed crops (45-80 % of the side, a random dihedral view each), so the model
    also sees content at up to twice its native resolution, as DRIS leaves often show it.
    """
    whole = _resize(image, size)
    out = [_dihedral(whole, i) for i in range(min(n, 8))]
    width, height = image.size
    for _ in range(max(0, n - 8)):
        side = int(min(width, height) * rng.uniform(0.45, 0.8))
        x0 = int(rng.integers(0, width - side + 1))
        y0 = int(rng.integers(0, height - side + 1))
        out.append(_dihedral(_resize(image, size, (x0, y0, x0 + side, y0 + side)), int(rng.integers(0, 8))))
    return out
