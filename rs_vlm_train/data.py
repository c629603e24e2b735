"""Readers for the training folders laid out like ``../shared/data`` (never copied into the repo)."""

from __future__ import annotations

import json
import re
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


VHR10_CLASSES = ("airplane", "ship", "storage tank", "baseball diamond", "tennis court", "basketball court",
                 "ground track field", "harbor", "bridge", "vehicle")
OBJECT_PROMPTS = ("a {}.", "an aerial image of a {}.", "there is a {} in the image.")
_BOX = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*,\s*(\d+)")


@dataclass
class ObjectBox:
    """One labelled box of an object-detection folder (VHR-10 layout)."""

    image: Path
    x1: int
    y1: int
    x2: int
    y2: int
    label: str


def read_object_boxes(folder: Path) -> list[ObjectBox]:
    """Boxes of ``images/NNN.jpg`` + ``boxes/NNN.txt`` with lines ``(x1,y1),(x2,y2),class``."""
    folder = Path(folder)
    boxes = []
    for txt in sorted((folder / "boxes").glob("*.txt")):
        image = folder / "images" / f"{txt.stem}.jpg"
        for line in txt.read_text(encoding="utf-8").splitlines():
            match = _BOX.search(line)
            if match:
                x1, y1, x2, y2, cls = map(int, match.groups())
                boxes.append(ObjectBox(image, x1, y1, x2, y2, VHR10_CLASSES[cls - 1]))
    return boxes


def held_out(keys: list[str], fraction: float, seed: int = 0) -> set[str]:
    """A reproducible held-back subset of ``keys`` (for example image names), by hashing.

    The choice depends only on each key, the fraction and the seed, not on the order or on
    which other keys exist, so adding data never moves an image between train and held-out.
    """
    import hashlib

    chosen = set()
    for key in keys:
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < fraction:
            chosen.add(key)
    return chosen
