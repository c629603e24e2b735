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


def load_rgb(path: Path, size: int) -> np.ndarray:
    """An image as uint8 (size, size, 3), resized with area averaging."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR, reducing_gap=2.0))


def views(rgb: np.ndarray, n: int) -> list[np.ndarray]:
    """The first ``n`` of the 8 dihedral views (rotations and flips) of an image."""
    out = []
    for flip in (False, True):
        base = rgb[:, ::-1] if flip else rgb
        for k in range(4):
            out.append(np.ascontiguousarray(np.rot90(base, k)))
    return out[:n]
