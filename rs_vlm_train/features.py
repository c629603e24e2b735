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
- ``vhr``: crops of VHR-10 around boxes; 20 % of the images are held back for object retrieval.
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

from rs_vlm_plugin.core.pipeline import CLASS_PROMPTS
from rs_vlm_plugin.modeling.efficientnet_lite import LITE_MEAN, LITE_STD
from rs_vlm_plugin.modeling.rsvlm import ModelConfig, build_backbone

from .data import (OBJECT_PROMPTS, _dihedral, held_out, load_image, read_captions, read_object_boxes,
                   read_scene_folders, views)

HELD_OUT_FRACTION = 0.2
CACHED_FINE_BLOCKS = 2  # the cache holds the features entering the backbone's last two blocks
UCM_NAMES = {"agricultural": "farmland", "baseballdiamond": "baseball diamond", "denseresidential": "dense residential area",
             "golfcourse": "golf course", "mediumresidential": "medium residential area",
             "mobilehomepark": "mobile home park", "parkinglot": "parking lot",
             "sparseresidential": "sparse residential area", "storagetanks": "storage tanks",
             "tenniscourt": "tennis court", "buildings": "buildings", "chaparral": "chaparral",
             "freeway": "freeway", "harbor": "harbor", "intersection": "intersection", "overpass": "overpass",
             "river": "river", "runway": "runway", "airplane": "airplanes", "beach": "beach", "forest": "forest"}
SCENE_PROMPTS = CLASS_PROMPTS  # the runtime's class prompts: training and use see the same ensemble


def readable(name: str) -> str:
    """A class folder name as words ("commercial_area" -> "commercial area")."""
    return UCM_NAMES.get(name, name.replace("_", " "))


def article(phrase: str) -> str:
    """``phrase`` with "a"/"an" in front."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


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
    labels = {ucm_train[j].label if kind == "ucm" else scenes[j][1] for kind, j in pool}
    mosaics = []
    for m in range(n_mosaics):
        grid = 2 if m % 2 == 0 else 3
        picks = []
        # Different images of different classes (classes may repeat only when there are fewer
        # classes than windows, as in tiny test folders).
        distinct = len(labels) >= grid * grid
        while len(picks) < grid * grid:
            cand = pool[int(rng.integers(len(pool)))]
            label = ucm_train[cand[1]].label if cand[0] == "ucm" else scenes[cand[1]][1]
            if all((k, j) != cand[:2] and (not distinct or lab != label) for k, j, lab in picks):
                picks.append((cand[0], cand[1], label))
        mosaics.append({"grid": grid, "sources": picks, "views": [int(v) for v in rng.integers(0, 8, grid * grid)]})

    def mosaic_view(i):
        spec = mosaics[i]
        g = spec["grid"]
        canvas = np.zeros((size, size, 3), np.uint8)
        edges = [round(k * size / g) for k in range(g + 1)]
        for k, ((kind, j, _), v) in enumerate(zip(spec["sources"], spec["views"])):
            r, c = divmod(k, g)
            h, w = edges[r + 1] - edges[r], edges[c + 1] - edges[c]
            path = ucm_train[j].path if kind == "ucm" else scenes[j][0]
            side = max(h, w)
            tile = _dihedral(np.asarray(load_image(path).resize((side, side), Image.BILINEAR)), v)[:h, :w]
            canvas[edges[r]:edges[r + 1], edges[c]:edges[c + 1]] = tile
        return [canvas]

    sets["mosaic"] = _compute(cache, "mosaic", runner, len(mosaics), 1, mosaic_view, {"mosaics": mosaics})

    boxes = read_object_boxes(data / "vhr10")
    vhr_held = held_out(sorted({b.image.name for b in boxes}), HELD_OUT_FRACTION, seed)
    for tag, train in (("vhr_train", True), ("vhr_val", False)):
        crops = vhr_crops(boxes, vhr_held, size, rng, train)
        sets[tag] = _compute(cache, tag, runner, len(crops), 1,
                             lambda i, crops=crops: [_resize(load_image(crops[i][0]), size, crops[i][1])],
                             {"crops": [{"file": str(c[0].relative_to(data)), "box": c[1], "objects": c[2]}
                                        for c in crops]})
    if config.fine_blocks != CACHED_FINE_BLOCKS:
        sets = {tag: _run_blocks(cache, config, tag, fs, CACHED_FINE_BLOCKS) for tag, fs in sets.items()}
    return sets


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
