"""AID scenes with their RSICD sentences: the reader, the held-back split and the cached sets.

``aid/images/<Class>/<class>_N.jpg`` (30 classes, 150 x 150 Google Earth crops) pairs by lower-case
file name with ``captions_text/rsicd_train_filename.txt`` (line i names the image of lines 5i..5i+4
of ``rsicd_train_caps.txt``). Many RSICD images carry one sentence five times, so each image keeps
its distinct sentences only. A class label is the file name's prefix ("bareland"), the same label
the RSICD file names carry, so :func:`classes.group` maps both to one concept.

Sets (cached by :func:`features.build_aid_sets`):

- ``aid`` (4 dihedral views, upsampled to the model's input): every image, 10 % held back by
  name hash (``held_out`` in the index) for AID val;
- ``mosaic_aid``: 2x2 and 3x3 mosaics of AID training images, for the region tier;
- ``mosaic_aid_lco``: the same without the AID classes of the leave-classes-out choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

AID_HELD_OUT_FRACTION = 0.1
AID_VIEWS = 4


@dataclass
class AidImage:
    """One AID image, its class label and its distinct RSICD sentences (raw text)."""

    path: Path
    label: str
    sentences: list[str]


def read_rsicd_pairs(data: Path) -> dict[str, list[str]]:
    """Lower-case RSICD file name -> its distinct sentences, in file order."""
    folder = Path(data) / "captions_text"
    caps, names = folder / "rsicd_train_caps.txt", folder / "rsicd_train_filename.txt"
    if not (caps.exists() and names.exists()):
        return {}
    lines = [line.strip() for line in caps.read_text(encoding="utf-8").splitlines() if line.strip()]
    files = [line.strip().lower() for line in names.read_text(encoding="utf-8").splitlines() if line.strip()]
    per_file = len(lines) // max(1, len(files))
    out: dict[str, list[str]] = {}
    for k, name in enumerate(files):
        distinct: list[str] = []
        for line in lines[k * per_file:(k + 1) * per_file]:
            if line not in distinct:
                distinct.append(line)
        if distinct:
            out[name] = distinct
    return out


def read_aid(data: Path) -> list[AidImage]:
    """Every AID image that has RSICD sentences, sorted by class folder and file name."""
    from .data import read_scene_folders

    root = Path(data) / "aid" / "images"
    if not root.exists():
        return []
    pairs = read_rsicd_pairs(data)
    items = []
    for path, _folder in read_scene_folders(root):
        sentences = pairs.get(path.name.lower())
        if sentences:
            items.append(AidImage(path, path.stem.lower().rsplit("_", 1)[0], sentences))
    return items


def aid_held_out(items: list[AidImage], seed: int = 0) -> set[str]:
    """File names of the AID val split: 10 % by name hash (adding images never moves one)."""
    from .data import held_out

    return held_out([i.path.name for i in items], AID_HELD_OUT_FRACTION, seed)
