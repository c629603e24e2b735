"""A tiny, seeded data folder laid out like ../shared/data, for testing the trainer and eval.

Colour-coded classes (no real imagery): UCM-like captions, RESISC-like scene folders, VHR-10-like
boxes, AID-like scenes paired with RSICD-like sentences and caption text files.  Only the layout and the code paths are under test, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"forest": (40, 110, 40), "river": (30, 70, 150), "beach": (220, 200, 150)}
UCM_ONLY = {"golfcourse": (90, 170, 80), "harbor": (60, 60, 120)}  # so that classes can be left out
RESISC_ONLY = {"desert": (210, 170, 110), "lake": (20, 50, 110)}
EXTRA = {"airplane": (200, 200, 200), "airport": (150, 150, 150)}  # like resisc45_extra


def _image(path: Path, colour, rng: np.random.Generator, size: int = 64) -> None:
    pixels = np.clip(np.asarray(colour) + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make(root: Path, seed: int = 0) -> Path:
    """Write the folder under ``root`` and return it."""
    rng = np.random.default_rng(seed)
    images = []
    for name, colour in {**CLASSES, **UCM_ONLY}.items():
        for k in range(8):
            rel = f"images/{name}/{name}{k:02d}.jpg"
            _image(root / "ucm" / rel, colour, rng)
            images.append({"filename": rel, "class": name, "split": "val" if k >= 6 else "train",
                           "sentences": [f"there is a {name} .", f"a {name} here .", f"it is a {name} .",
                                         f"this is a {name} area .", f"a big {name} ."]})
    for name, colour in {**CLASSES, **RESISC_ONLY}.items():
        for k in range(10):
            _image(root / "resisc12" / "train" / name / f"{name}_{k:03d}.jpg", colour, rng)
    for name, colour in EXTRA.items():
        for k in range(6):
            _image(root / "resisc45_extra" / name / f"{name}_{k:03d}.jpg", colour, rng)
    (root / "ucm" / "captions.json").write_text(json.dumps({"images": images}))
    (root / "vhr10" / "images").mkdir(parents=True)
    (root / "vhr10" / "boxes").mkdir()
    for k in range(1, 31):  # 30 images: the hashed 20 % hold-back keeps 4 of them
        pixels = np.clip(120 + rng.normal(0, 10, (200, 260, 3)), 0, 255).astype(np.uint8)
        pixels[40:80, 50:90] = 240
        pixels[120:130, 150:220] = 20
        Image.fromarray(pixels).save(root / "vhr10" / "images" / f"{k:03d}.jpg")
        (root / "vhr10" / "boxes" / f"{k:03d}.txt").write_text("(50,40),(90,80),3\n(150,120),(220,130),2\n")
    text = root / "captions_text"
    text.mkdir()
    lines = [f"many {w} are next to a {v} ." for w in ("trees", "houses", "boats") for v in ("river", "road", "beach")]
    names = ["forest_1.jpg", "river_1.jpg", "beach_1.jpg", "desert_1.jpg", "00005.jpg"]
    caps = lines * 3 + lines[:3]  # 5 sentences per file (the first 5 files: the corpus's own)
    # AID-like scenes (aid/images/<Class>/<class>_N.jpg), paired with RSICD lines by file name; two
    # of their classes (bridge, church) are AID's own, so the leave-classes-out choice can draw them.
    for folder, colour in (("Forest", CLASSES["forest"]), ("Bridge", (120, 120, 60)), ("Church", (180, 90, 90))):
        label = folder.lower()
        for k in range(2, 12):
            _image(root / "aid" / "images" / folder / f"{label}_{k}.jpg", colour, rng, size=48)
            names.append(f"{label}_{k}.jpg")
            # one sentence five times for some images, as RSICD has: deduplicated per image
            caps += [f"a {label} in the image ."] * 5 if k % 2 else [f"there is a {label} here .", f"a {label} ."] * 2 + \
                [f"a green {label} ."]
    (text / "rsicd_train_caps.txt").write_text("\n".join(caps) + "\n")
    (text / "rsicd_train_filename.txt").write_text("\n".join(names) + "\n")
    (text / "rsitmd_train_caps.txt").write_text("\n".join(lines) + "\n")
    (text / "sydney_train_val.json").write_text(json.dumps(
        {"images": [{"sentences": [{"raw": "A residential area with houses ."}, {"raw": "Some boats in a river ."}]}]}))
    return root
