"""Frozen-trunk features and frozen-text embeddings for training the RS-VLM model, cached.

The EfficientNet-Lite trunk (everything below the fine-tuned blocks) and the MiniLM text
encoder are frozen, so their outputs are computed once with onnxruntime and stored in
``--cache`` (never in the repository: they are derived from the data).  Each image set is
stored as two float16 memmaps, ``fine`` (N, V, 112, 14, 14) and ``mid`` (N, V, 192, 7, 7), plus
a JSON index.  Sets:

- ``ucm_train`` (8 dihedral views), ``ucm_val`` (1 view): UCM with captions;
- ``resisc`` (2 views): RESISC12 train, 20 % of which is held back (by name hash) for scene accuracy;
- ``mosaic``: 2x2 and 3x3 mosaics of different training images (UCM train and the RESISC part
  that is not held back), each source with a random dihedral view;
- ``vhr``: crops of VHR-10 around boxes; 20 % of the images are held back for object retrieval;
- ``aid``, ``mosaic_aid``, ``mosaic_aid_lco``: AID with its RSICD sentences (``aid.py``).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rs_vlm_plugin.core.jobs.classify import CLASS_PROMPTS
from rs_vlm_plugin.modeling.efficientnet_lite import LITE_MEAN, LITE_STD
from rs_vlm_plugin.modeling.rsvlm import ModelConfig, build_backbone

from .classes import UCM_NAMES, article, readable  # noqa: F401 (re-exported)
from .data import (OBJECT_PROMPTS, _dihedral, held_out, load_image, read_captions, read_object_boxes,
                   read_scene_folders, views)

HELD_OUT_FRACTION = 0.2
CACHED_FINE_BLOCKS = 2  # the cache holds the features entering the backbone's last two blocks
ZOOM_VIEWS = 4  # zoomed-in views of each UCM train image (``ucm_zoom``, the anchor's fine-GSD set)
SCENE_PROMPTS = CLASS_PROMPTS  # the runtime's class prompts: training and use see the same ensemble


def normalise_caption(text: str) -> str:
    """Lower case words without punctuation (as the decoder writes and COCO tokenises)."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@dataclass
class FeatureSet:
    """Cached trunk outputs of one image set."""

    fine: np.ndarray
    mid: np.ndarray
    index: dict

    def take(self, rows: np.ndarray, view: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 tensors of the given (row, view) pairs."""
        return (torch.from_numpy(self.fine[rows, view].astype(np.float32)),
                torch.from_numpy(self.mid[rows, view].astype(np.float32)))


class TrunkRunner:
    """The frozen trunk exported to ONNX (fast on CPU), run on uint8 RGB views."""

    def __init__(self, cache: Path, config: ModelConfig) -> None:
        import onnxruntime as ort

        path = cache / f"trunk_{config.backbone}_{config.fine_blocks}.onnx"
        if not path.exists():
            trunk, _ = build_backbone(config)
            size = config.image_size
            torch.onnx.export(trunk, (torch.zeros(2, 3, size, size),), str(path), input_names=["images"],
                              output_names=["fine", "mid"],
                              dynamic_axes={"images": {0: "n"}, "fine": {0: "n"}, "mid": {0: "n"}},
                              opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.mean = np.asarray(LITE_MEAN, np.float32)[:, None, None]
        self.std = np.asarray(LITE_STD, np.float32)[:, None, None]

    def __call__(self, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        x = (np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32) - self.mean) / self.std
        fine, mid = self.session.run(["fine", "mid"], {"images": x})
        return fine, mid


def _compute(cache: Path, tag: str, runner: TrunkRunner, n_items: int, n_views: int, make_views, index: dict) -> FeatureSet:
    """Fill the memmaps of one set by calling ``make_views(i) -> list of uint8 views``."""
    done = cache / f"{tag}.json"
    fine_path, mid_path = cache / f"{tag}.fine.f16", cache / f"{tag}.mid.f16"
    fine_shape = (n_items, n_views, 112, 14, 14)
    mid_shape = (n_items, n_views, 192, 7, 7)
    if done.exists():
        index = json.loads(done.read_text())
        return FeatureSet(np.memmap(fine_path, np.float16, "r", shape=tuple(index["fine_shape"])),
                          np.memmap(mid_path, np.float16, "r", shape=tuple(index["mid_shape"])), index)
    fine = np.memmap(fine_path, np.float16, "w+", shape=fine_shape)
    mid = np.memmap(mid_path, np.float16, "w+", shape=mid_shape)
    batch, where = [], []
    start = time.time()

    def flush():
        f, m = runner(batch)
        for (i, v), a, b in zip(where, f, m):
            fine[i, v] = a
            mid[i, v] = b
        batch.clear()
        where.clear()

    for i in range(n_items):
        for v, view in enumerate(make_views(i)):
            batch.append(view)
            where.append((i, v))
        if len(batch) >= 32:
            flush()
        if i % 500 == 0:
            print(f"  {tag}: {i}/{n_items}, {time.time() - start:.0f} s", flush=True)
    if batch:
        flush()
    fine.flush()
    mid.flush()
    index |= {"fine_shape": list(fine_shape), "mid_shape": list(mid_shape), "seconds": round(time.time() - start, 1)}
    done.write_text(json.dumps(index))
    print(f"  {tag}: {n_items} items x {n_views} views in {time.time() - start:.0f} s", flush=True)
    return FeatureSet(np.memmap(fine_path, np.float16, "r", shape=fine_shape),
                      np.memmap(mid_path, np.float16, "r", shape=mid_shape), index)


def _run_blocks(cache: Path, config: ModelConfig, tag: str, fs: FeatureSet, from_blocks: int) -> FeatureSet:
    """Carry the cached ``mid`` features (taken ``from_blocks`` blocks before the end) through those
    blocks with the frozen ImageNet weights, so that only ``config.fine_blocks`` remain trainable."""
    import onnxruntime as ort

    n_blocks = from_blocks - config.fine_blocks
    out_path = cache / f"{tag}.mid{config.fine_blocks}.f16"
    done = cache / f"{tag}.mid{config.fine_blocks}.json"
    _, net = build_backbone(config)
    total = len(net._blocks)
    blocks = torch.nn.Sequential(*net._blocks[total - from_blocks: total - config.fine_blocks]).eval()
    n, v = fs.mid.shape[:2]
    with torch.no_grad():
        out_ch = blocks(torch.zeros(1, *fs.mid.shape[2:])).shape[1:]
    shape = (n, v, *out_ch)
    if not done.exists():
        path = cache / f"blocks_{from_blocks}_{config.fine_blocks}.onnx"
        if not path.exists():
            torch.onnx.export(blocks, (torch.zeros(2, *fs.mid.shape[2:]),), str(path), input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17,
                              dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        sess = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        out = np.memmap(out_path, np.float16, "w+", shape=shape)
        flat_in = fs.mid.reshape(n * v, *fs.mid.shape[2:])
        flat_out = out.reshape(n * v, *out_ch)
        for k in range(0, n * v, 256):
            flat_out[k:k + 256] = sess.run(["y"], {"x": flat_in[k:k + 256].astype(np.float32)})[0]
        out.flush()
        done.write_text(json.dumps({"shape": list(shape), "blocks": n_blocks}))
        print(f"  {tag}: carried through {n_blocks} frozen blocks", flush=True)
    return FeatureSet(fs.fine, np.memmap(out_path, np.float16, "r", shape=shape), fs.index)


def _resize(image: Image.Image, size: int, box=None) -> np.ndarray:
    return np.asarray(image.resize((size, size), Image.BILINEAR, box=box, reducing_gap=2.0))


def vhr_crops(boxes, held: set[str], size: int, rng: np.random.Generator, train: bool):
    """Square crops around boxes: (image, crop box, [(label, fractional box)])."""
    by_image: dict[Path, list] = {}
    for b in boxes:
        if (b.image.name in held) != train:
            by_image.setdefault(b.image, []).append(b)
    crops = []
    for image, items in sorted(by_image.items()):
        with Image.open(image) as im:
            width, height = im.size
        for b in items:
            bw, bh = b.x2 - b.x1, b.y2 - b.y1
            scale = rng.uniform(2.0, 4.0) if train else 3.0
            side = int(min(min(width, height), max(96, scale * max(bw, bh))))
            cx = (b.x1 + b.x2) / 2 + (rng.uniform(-0.25, 0.25) * side if train else 0)
            cy = (b.y1 + b.y2) / 2 + (rng.uniform(-0.25, 0.25) * side if train else 0)
            x0 = int(min(max(0, cx - side / 2), width - side))
            y0 = int(min(max(0, cy - side / 2), height - side))
            inside = []
            for o in (items if train else [b]):
                ix = max(0, min(o.x2, x0 + side) - max(o.x1, x0))
                iy = max(0, min(o.y2, y0 + side) - max(o.y1, y0))
                area = max(1, (o.x2 - o.x1) * (o.y2 - o.y1))
                if ix * iy >= 0.6 * area:
                    inside.append((o.label, [max(0.0, (o.x1 - x0) / side), max(0.0, (o.y1 - y0) / side),
                                             min(1.0, (o.x2 - x0) / side), min(1.0, (o.y2 - y0) / side)]))
            crops.append((image, (x0, y0, x0 + side, y0 + side), inside))
    return crops


def make_mosaics(pool: list[tuple[str, int]], sources: dict, n: int, rng: np.random.Generator) -> list[dict]:
    """Specs of ``n`` mosaics, alternately 2x2 and 3x3, of different images of different classes.

    Args:
        pool: (source kind, index) candidates; ``sources[kind][index]`` is (path, class).
    """
    labels = {sources[kind][j][1] for kind, j in pool}
    mosaics = []
    for m in range(n):
        grid = 2 if m % 2 == 0 else 3
        picks = []
        # Classes may repeat only when there are fewer classes than windows (tiny test folders).
        distinct = len(labels) >= grid * grid
        while len(picks) < grid * grid:
            kind, j = pool[int(rng.integers(len(pool)))]
            label = sources[kind][j][1]
            if all((k, i) != (kind, j) and (not distinct or lab != label) for k, i, lab in picks):
                picks.append((kind, j, label))
        mosaics.append({"grid": grid, "sources": picks, "views": [int(v) for v in rng.integers(0, 8, grid * grid)]})
    return mosaics


def mosaic_view(spec: dict, sources: dict, size: int) -> np.ndarray:
    """The mosaic of a spec from :func:`make_mosaics`, each window a dihedral view of its source."""
    g = spec["grid"]
    canvas = np.zeros((size, size, 3), np.uint8)
    edges = [round(k * size / g) for k in range(g + 1)]
    for k, ((kind, j, _), v) in enumerate(zip(spec["sources"], spec["views"])):
        r, c = divmod(k, g)
        h, w = edges[r + 1] - edges[r], edges[c + 1] - edges[c]
        side = max(h, w)
        tile = _dihedral(np.asarray(load_image(sources[kind][j][0]).resize((side, side), Image.BILINEAR)), v)[:h, :w]
        canvas[edges[r]:edges[r + 1], edges[c]:edges[c + 1]] = tile
    return canvas


def coarser_views(image: Image.Image, size: int, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Views at coarser ground sample distances than the image's own.

    Even views: blurred to a 2-4x coarser GSD (downsampled, then back to the input size).
    Odd views: zoomed out 2x, a 2x2 tiling of four dihedral views of the image at half size,
    as a DRIS root tile sees a large homogeneous scene.
    """
    out = []
    for k in range(n):
        if k % 2 == 0:
            factor = float(rng.uniform(2.0, 4.0))
            small = image.resize((max(8, int(size / factor)),) * 2, Image.BILINEAR, reducing_gap=2.0)
            out.append(_dihedral(np.asarray(small.resize((size, size), Image.BILINEAR)), int(rng.integers(0, 8))))
        else:
            half = np.asarray(image.resize((size // 2, size // 2), Image.BILINEAR, reducing_gap=2.0))
            picks = rng.permutation(8)[:4]
            top = np.concatenate([_dihedral(half, int(picks[0])), _dihedral(half, int(picks[1]))], 1)
            bottom = np.concatenate([_dihedral(half, int(picks[2])), _dihedral(half, int(picks[3]))], 1)
            out.append(np.concatenate([top, bottom], 0))
    return out


def zoomed_in_views(image: Image.Image, size: int, rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Views at finer ground sample distances than the image's own: a random square of 2/7 to 1/2
    of the side, upsampled to ``size`` in a random dihedral view. A UCM image (30 cm) reads as
    10-15 cm aerial imagery, as a native tile of a drone or NEON orthophoto does."""
    out = []
    width, height = image.size
    for _ in range(n):
        side = int(round(min(width, height) * float(rng.uniform(2 / 7, 1 / 2))))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        view = _resize(image, size, (x, y, x + side, y + side))
        out.append(_dihedral(view, int(rng.integers(0, 8))))
    return out


def build_open_vocabulary_sets(data: Path, cache: Path, runner: "TrunkRunner", size: int, ucm_train, scenes, held,
                               boxes, vhr_held: set[str], n_mosaics: int, seed: int) -> dict[str, FeatureSet]:
    """The sets of issue 10 (open vocabulary), each with its own seeded generator.

    - ``ucm_gsd`` (2 views), ``resisc_gsd`` (1 view): coarser-GSD views (:func:`coarser_views`);
    - ``extra`` (2 dihedral views): RESISC45's airplane and airport classes, 20 % held back by name hash;
    - ``vhr_scene`` (1 view): whole VHR-10 images with their boxes (in image fractions), for the
      box-to-caption scene and region sentences; held-back images are flagged;
    - ``mosaic_lco``: mosaics without any class of the leave-classes-out choice (sources: UCM train,
      RESISC and extra images that are not held back).
    """
    from .classes import group, leave_out_choice

    sets = {}
    rng = np.random.default_rng(seed + 10)
    sets["ucm_gsd"] = _compute(cache, "ucm_gsd", runner, len(ucm_train), 2,
                               lambda i: coarser_views(load_image(ucm_train[i].path), size, rng, 2),
                               {"files": [str(i.path.relative_to(data)) for i in ucm_train]})
    sets["resisc_gsd"] = _compute(cache, "resisc_gsd", runner, len(scenes), 1,
                                  lambda i: coarser_views(load_image(scenes[i][0]), size, rng, 2)[i % 2:i % 2 + 1],
                                  {"files": [str(p.relative_to(data)) for p, _ in scenes]})
    extra_dir = data / "resisc45_extra"
    extra = read_scene_folders(extra_dir) if extra_dir.exists() else []
    extra_held = held_out([p.name for p, _ in extra], HELD_OUT_FRACTION, seed)
    if extra:
        sets["extra"] = _compute(cache, "extra", runner, len(extra), 2,
                                 lambda i: views(load_image(extra[i][0]), 2, size, rng),
                                 {"files": [str(p.relative_to(data)) for p, _ in extra],
                                  "classes": [c for _, c in extra], "held_out": [p.name in extra_held for p, _ in extra]})
    by_image: dict[Path, list] = {}
    for b in boxes:
        by_image.setdefault(b.image, []).append(b)
    images = sorted(by_image)
    scene_index = []
    for image in images:
        with Image.open(image) as im:
            width, height = im.size
        scene_index.append({"file": str(image.relative_to(data)), "held_out": image.name in vhr_held,
                            "objects": [(b.label, [b.x1 / width, b.y1 / height, b.x2 / width, b.y2 / height])
                                        for b in by_image[image]]})
    sets["vhr_scene"] = _compute(cache, "vhr_scene", runner, len(images), 1,
                                 lambda i: [_resize(load_image(images[i]), size)], {"images": scene_index})
    choice = leave_out_choice([i.label for i in ucm_train], [c for _, c in scenes], seed=seed)
    unseen = set(choice["groups"])
    sources = {"ucm": [(i.path, i.label) for i in ucm_train], "resisc": scenes, "extra": extra}
    pool = [("ucm", i) for i, item in enumerate(ucm_train) if group("ucm", item.label) not in unseen]
    pool += [("resisc", i) for i, (p, c) in enumerate(scenes) if p.name not in held and group("resisc", c) not in unseen]
    pool += [("extra", i) for i, (p, c) in enumerate(extra) if p.name not in extra_held and group("extra", c) not in unseen]
    mosaics = make_mosaics(pool, sources, n_mosaics, rng)
    sets["mosaic_lco"] = _compute(cache, "mosaic_lco", runner, len(mosaics), 1,
                                  lambda i: [mosaic_view(mosaics[i], sources, size)],
                                  {"mosaics": mosaics, "leave_out": choice})
    return sets


def build_aid_sets(data: Path, cache: Path, runner, size: int, unseen_groups: set[str], n_mosaics: int,
                   seed: int) -> dict:
    """The AID feature sets (empty when ``data`` has no ``aid`` folder); see ``aid.py``.

    Args:
        unseen_groups: Concept groups of the leave-classes-out choice (``mosaic_aid_lco`` skips them).
    """
    from .aid import AID_VIEWS, aid_held_out, read_aid
    from .classes import group

    items = read_aid(data)
    if not items:
        return {}
    held = aid_held_out(items, seed)
    rng = np.random.default_rng(seed + 20)
    sets = {"aid": _compute(cache, "aid", runner, len(items), AID_VIEWS,
                            lambda i: views(load_image(items[i].path), AID_VIEWS, size, rng),
                            {"files": [str(i.path.relative_to(data)) for i in items],
                             "classes": [i.label for i in items], "sentences": [i.sentences for i in items],
                             "held_out": [i.path.name in held for i in items]})}
    sources = {"aid": [(i.path, i.label) for i in items]}
    train = [("aid", k) for k, i in enumerate(items) if i.path.name not in held]
    for tag, pool in (("mosaic_aid", train),
                      ("mosaic_aid_lco", [(s, k) for s, k in train if group("aid", items[k].label) not in unseen_groups])):
        specs = make_mosaics(pool, sources, n_mosaics, rng)
        sets[tag] = _compute(cache, tag, runner, len(specs), 1,
                             lambda i, specs=specs: [mosaic_view(specs[i], sources, size)],
                             {"mosaics": specs, "unseen_groups": sorted(unseen_groups)})
    return sets


def build_all(data: Path, cache: Path, config: ModelConfig, n_mosaics: int = 4000, seed: int = 0) -> dict[str, FeatureSet]:
    """Compute (or open) every cached set."""
    cache.mkdir(parents=True, exist_ok=True)
    import dataclasses

    runner = TrunkRunner(cache, dataclasses.replace(config, fine_blocks=CACHED_FINE_BLOCKS))
    size = config.image_size
    rng = np.random.default_rng(seed)
    sets = {}

    ucm_train = read_captions(data / "ucm", "train")
    ucm_val = read_captions(data / "ucm", "val")
    for tag, items, n_views in (("ucm_train", ucm_train, 8), ("ucm_val", ucm_val, 1)):
        sets[tag] = _compute(cache, tag, runner, len(items), n_views,
                             lambda i, items=items, n=n_views: views(load_image(items[i].path), n, size, rng),
                             {"files": [str(i.path.relative_to(data)) for i in items],
                              "classes": [i.label for i in items], "sentences": [i.sentences for i in items]})

    scenes = read_scene_folders(data / "resisc12" / "train")
    held = held_out([p.name for p, _ in scenes], HELD_OUT_FRACTION, seed)
    sets["resisc"] = _compute(cache, "resisc", runner, len(scenes), 2,
                              lambda i: views(load_image(scenes[i][0]), 2, size, rng),
                              {"files": [str(p.relative_to(data)) for p, _ in scenes], "classes": [c for _, c in scenes],
                               "held_out": [p.name in held for p, _ in scenes]})

    # Mosaics: sources are UCM train images and RESISC images that are not held back.
    pool = [("ucm", i) for i in range(len(ucm_train))] + \
           [("resisc", i) for i, (p, _) in enumerate(scenes) if p.name not in held]
    sources = {"ucm": [(i.path, i.label) for i in ucm_train], "resisc": scenes}
    mosaics = make_mosaics(pool, sources, n_mosaics, rng)
    sets["mosaic"] = _compute(cache, "mosaic", runner, len(mosaics), 1,
                              lambda i: [mosaic_view(mosaics[i], sources, size)], {"mosaics": mosaics})

    boxes = read_object_boxes(data / "vhr10")
    vhr_held = held_out(sorted({b.image.name for b in boxes}), HELD_OUT_FRACTION, seed)
    for tag, train in (("vhr_train", True), ("vhr_val", False)):
        crops = vhr_crops(boxes, vhr_held, size, rng, train)
        sets[tag] = _compute(cache, tag, runner, len(crops), 1,
                             lambda i, crops=crops: [_resize(load_image(crops[i][0]), size, crops[i][1])],
                             {"crops": [{"file": str(c[0].relative_to(data)), "box": c[1], "objects": c[2]}
                                        for c in crops]})
    sets.update(build_open_vocabulary_sets(data, cache, runner, size, ucm_train, scenes, held, boxes, vhr_held,
                                           n_mosaics // 2, seed))
    from .aid import read_aid
    from .classes import leave_out_choice

    aid_classes = sorted({i.label for i in read_aid(data)})
    if aid_classes:
        extra = {"extra": sorted(set(sets["extra"].index["classes"])) if "extra" in sets else []}
        choice = leave_out_choice([i.label for i in ucm_train], [c for _, c in scenes], seed=seed,
                                  aid_classes=aid_classes, other_classes=extra)
        sets.update(build_aid_sets(data, cache, runner, size, set(choice["groups"]), n_mosaics // 2, seed))
        sets["mosaic_aid_lco"].index["leave_out"] = choice
    zoom_rng = np.random.default_rng(seed + 30)  # its own generator: the sets above stay as they were
    sets["ucm_zoom"] = _compute(cache, "ucm_zoom", runner, len(ucm_train), ZOOM_VIEWS,
                                lambda i: zoomed_in_views(load_image(ucm_train[i].path), size, zoom_rng, ZOOM_VIEWS),
                                {"files": [str(i.path.relative_to(data)) for i in ucm_train],
                                 "classes": [i.label for i in ucm_train]})
    if config.fine_blocks != CACHED_FINE_BLOCKS:
        sets = {tag: _run_blocks(cache, config, tag, fs, CACHED_FINE_BLOCKS) for tag, fs in sets.items()}
    return sets


def leave_out(sets: dict) -> dict:
    """The leave-classes-out choice of the cached sets: with AID's classes when AID is there."""
    if "mosaic_aid_lco" in sets:
        return sets["mosaic_aid_lco"].index["leave_out"]
    return sets["mosaic_lco"].index["leave_out"]


def text_embeddings(texts: list[str], cache: Path, tag: str) -> np.ndarray:
    """Frozen MiniLM embeddings of ``texts``, cached by tag (length-sorted batches, ONNX)."""
    emb_path, txt_path = cache / f"text_{tag}.npy", cache / f"text_{tag}.json"
    if emb_path.exists() and txt_path.exists() and json.loads(txt_path.read_text()) == texts:
        return np.load(emb_path)
    import onnxruntime as ort

    from rs_vlm_plugin.modeling.text_encoder import SentenceEncoder, load_tokenizer, tokenize

    onnx_path = cache / "minilm.onnx"
    tokenizer = load_tokenizer()
    if not onnx_path.exists():
        ids, mask = tokenize(tokenizer, ["a road", "an aerial image of a forest"])
        torch.onnx.export(SentenceEncoder().eval(), (ids, mask), str(onnx_path), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], dynamic_axes={"input_ids": {0: "n", 1: "t"},
                                                                    "attention_mask": {0: "n", 1: "t"}, "embedding": {0: "n"}},
                          opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), 384), np.float32)
    start = time.time()
    for k in range(0, len(order), 128):
        rows = order[k:k + 128]
        ids, mask = tokenize(tokenizer, [texts[i] for i in rows])
        out[rows] = sess.run(["embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        if k % 12800 == 0:
            print(f"  text {tag}: {k}/{len(texts)}, {time.time() - start:.0f} s", flush=True)
    np.save(emb_path, out)
    txt_path.write_text(json.dumps(texts))
    return out


def main() -> int:
    """``python -m rs_vlm_train.features --data DIR [--cache DIR]``: fill the cache."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path(".cache/train/rsvlm"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    sets = build_all(args.data, args.cache, ModelConfig())
    for k, v in sets.items():
        print(k, v.fine.shape)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
