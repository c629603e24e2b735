"""AID scenes with their RSICD sentences: the reader, the held-back split and the cached sets.

``aid/images/<Class>/<class>_N.jpg`` (30 classes, 150 x 150 Google Earth crops) pairs by lower-case
file name with ``captions_text/rsicd_train_filename.txt`` (line i names the image of lines 5i..5i+4
of ``rsicd_train_caps.txt``). Many RSICD images carry one sentence five times, so each image keeps
its distinct sentences only. A class label is the file name's prefix ("bareland"), the same label
the RSICD file names carry, so :func:`classes.group` maps both to one concept.

Sets (cached by :func:`build_aid_sets`):

- ``aid`` (4 dihedral views, upsampled to the model's input): every image, 10 % held back by
  name hash (``held_out`` in the index) for AID val;
- ``mosaic_aid``: 2x2 and 3x3 mosaics of AID training images, for the region tier;
- ``mosaic_aid_lco``: the same without the AID classes of the leave-classes-out choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def build_aid_sets(data: Path, cache: Path, runner, size: int, unseen_groups: set[str], n_mosaics: int,
                   seed: int) -> dict:
    """The AID feature sets (empty when ``data`` has no ``aid`` folder); see the module docstring.

    Args:
        unseen_groups: Concept groups of the leave-classes-out choice (``mosaic_aid_lco`` skips them).
    """
    from . import features as feat
    from .classes import group
    from .data import load_image, views

    items = read_aid(data)
    if not items:
        return {}
    held = aid_held_out(items, seed)
    rng = np.random.default_rng(seed + 20)
    sets = {"aid": feat._compute(cache, "aid", runner, len(items), AID_VIEWS,
                                 lambda i: views(load_image(items[i].path), AID_VIEWS, size, rng),
                                 {"files": [str(i.path.relative_to(data)) for i in items],
                                  "classes": [i.label for i in items], "sentences": [i.sentences for i in items],
                                  "held_out": [i.path.name in held for i in items]})}
    sources = {"aid": [(i.path, i.label) for i in items]}
    train = [("aid", k) for k, i in enumerate(items) if i.path.name not in held]
    for tag, pool in (("mosaic_aid", train),
                      ("mosaic_aid_lco", [(s, k) for s, k in train if group("aid", items[k].label) not in unseen_groups])):
        specs = feat.make_mosaics(pool, sources, n_mosaics, rng)
        sets[tag] = feat._compute(cache, tag, runner, len(specs), 1,
                                  lambda i, specs=specs: [feat.mosaic_view(specs[i], sources, size)],
                                  {"mosaics": specs, "unseen_groups": sorted(unseen_groups)})
    return sets
