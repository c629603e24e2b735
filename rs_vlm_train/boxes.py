"""Train the object box head (issue 22) on VHR-10's boxes, over cached trunk features.

    .venv/bin/python -m rs_vlm_train.boxes --data ../shared/data --out out/boxes/all.npz
    .venv/bin/python -m rs_vlm_train.boxes --data ../shared/data --hold-out --out out/boxes/lco.npz

- **Split**: 20 % of VHR-10's images by name hash (``data.held_out``, seed 0: the images the image
  tower's training holds back too) are val; the head never sees them.
- **Open vocabulary, measured honestly**: ``--hold-out`` removes the images that contain any box of
  ``HELD_OUT_CLASSES`` from training (their objects would otherwise be taught as background or as
  objects), so those three classes are found only through the text space.
- **Features**: the frozen trunk (``boxnet.BoxTrunk``) on every training image at scales 1, 0.7 and
  0.5, mirrored and quarter-turned at 1, flipped at 0.7 (six views), whole images padded to a
  multiple of 32 (the graph is fully convolutional), cached in fp16 under ``.cache/train/rsvlm``.
- **Losses** (CenterNet): penalty-reduced focal loss on the class-agnostic heat map; L1 on log sizes
  and offsets at centres; a sigmoid loss of each centre's embedding against the prompt ensembles of
  the trained class names (``locate.boxes.query_embedding``, what a search embeds), so a box's score
  for any text is ``heat * sigmoid(scale * cos + bias)``.
- **Val**: mAP at IoU 0.5 per class on the val images (whole images, torch) after every epoch; the
  best epoch of the trained classes is kept (so the val figure chose the epoch: say so where reported).

Writes the head's weights (``.npz`` with ``meta_json``) and a JSON report beside them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rs_vlm_plugin.core.locate.metrics import average_precision  # noqa: E402
from rs_vlm_plugin.modeling.boxnet import STRIDE, BoxHead, BoxTrunk, peak_mask  # noqa: E402
from rs_vlm_plugin.modeling.efficientnet_lite import LITE_MEAN, LITE_STD, load_efficientnet_lite  # noqa: E402
from rs_vlm_train.data import VHR10_CLASSES, held_out, read_object_boxes  # noqa: E402
from rs_vlm_train.features import HELD_OUT_FRACTION  # noqa: E402

HELD_OUT_CLASSES = ("basketball court", "ground track field", "vehicle")
QUERY = {"airplane": "airplanes", "ship": "ships", "storage tank": "storage tanks",
         "baseball diamond": "baseball diamonds", "tennis court": "tennis courts",
         "basketball court": "basketball courts", "ground track field": "ground track fields",
         "harbor": "harbors", "bridge": "bridges", "vehicle": "vehicles"}
SCALES = (1.0, 0.7, 0.5)
FLIPS = {1.0: ("h", "r"), 0.7: ("v",)}  # extra views: mirrored and quarter-turned (objects have no up)
CACHE = ROOT / ".cache" / "train" / "rsvlm"


def split_images(data: Path) -> tuple[dict, dict]:
    """(train, val): image path -> [(x1, y1, x2, y2, class)], val as ``held_out`` chooses it."""
    boxes = read_object_boxes(Path(data) / "vhr10")
    names = sorted({b.image.name for b in boxes})
    val_names = held_out(names, HELD_OUT_FRACTION, 0)
    train, val = {}, {}
    for b in boxes:
        (val if b.image.name in val_names else train).setdefault(b.image, []).append(
            (b.x1, b.y1, b.x2, b.y2, b.label))
    return train, val


def normalised(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H', W') float, zero-padded (grey) to multiples of 32 at the bottom right."""
    h, w = image.shape[:2]
    x = (torch.from_numpy(image.astype(np.float32)) - torch.tensor(LITE_MEAN)) / torch.tensor(LITE_STD)
    x = x.permute(2, 0, 1)[None]
    return F.pad(x, (0, (-w) % 32, 0, (-h) % 32))


def views(path: Path, boxes: list, train: bool):
    """(image array, boxes) at each training scale (and mirrored at scale 1); val: scale 1 only."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    out = []
    for scale in (SCALES if train else (1.0,)):
        size = (max(32, round(img.width * scale)), max(32, round(img.height * scale)))
        arr = np.asarray(img.resize(size, Image.BILINEAR) if scale != 1.0 else img)
        sx, sy = size[0] / img.width, size[1] / img.height
        scaled = [(x1 * sx, y1 * sy, x2 * sx, y2 * sy, c) for x1, y1, x2, y2, c in boxes]
        out.append((arr, scaled))
        if train and scale in FLIPS:
            out += [transformed(arr, scaled, how) for how in FLIPS[scale]]
    return out


def transformed(arr: np.ndarray, boxes: list, how: str):
    """A mirrored ("h", "v") or quarter-turned ("r", counter-clockwise) view and its boxes."""
    h, w = arr.shape[:2]
    if how == "h":
        return arr[:, ::-1].copy(), [(w - x2, y1, w - x1, y2, c) for x1, y1, x2, y2, c in boxes]
    if how == "v":
        return arr[::-1].copy(), [(x1, h - y2, x2, h - y1, c) for x1, y1, x2, y2, c in boxes]
    # np.rot90: new[i, j] = old[j, w - 1 - i], so a point (x, y) goes to (y, w - x)
    return np.rot90(arr).copy(), [(y1, w - x2, y2, w - x1, c) for x1, y1, x2, y2, c in boxes]


def cached_features(trunk: BoxTrunk, images: dict, name: str, train: bool, cache: Path = CACHE) -> list[dict]:
    """Trunk features (fp16) of every view of every image, computed once into the cache."""
    path = cache / f"boxes_{name}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    items, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for k, (image, boxes) in enumerate(sorted(images.items())):
            for arr, scaled in views(image, boxes, train):
                s8, s16, s32 = trunk(normalised(arr))
                items.append({"image": image.name, "size": arr.shape[:2], "boxes": scaled,
                              "s8": s8[0].half(), "s16": s16[0].half(), "s32": s32[0].half()})
            if k % 50 == 0:
                print(f"  {name}: {k}/{len(images)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(items, path)
    return items


def gaussian_targets(item: dict, classes: list[str]):
    """Heat map (h, w), and per centre: cell index, log size, offset, class index."""
    h, w = item["s8"].shape[-2:]
    heat = np.zeros((h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    centres = []
    for x1, y1, x2, y2, c in item["boxes"]:
        bw, bh = max(x2 - x1, 2.0) / STRIDE, max(y2 - y1, 2.0) / STRIDE
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sx, sy = max(bw / 6, 0.5), max(bh / 6, 0.5)
        g = np.exp(-((xs - ix) ** 2 / (2 * sx * sx) + (ys - iy) ** 2 / (2 * sy * sy)))
        heat = np.maximum(heat, g)
        centres.append((iy * w + ix, math.log(bw), math.log(bh), cx - ix, cy - iy, classes.index(c) if c in classes else -1))
    return heat, centres


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * neg).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def class_texts(bundle_dir: Path, classes: list[str]) -> np.ndarray:
    """The prompt ensembles a search embeds for each class's plural name."""
    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.core.locate.boxes import query_embedding

    bundle = ModelBundle.load(bundle_dir)
    return np.stack([query_embedding(bundle, QUERY[c]) for c in classes]).astype(np.float32)


def train_head(items: list[dict], texts: torch.Tensor, classes: list[str], epochs: int, seed: int = 0,
               channels=(40, 112, 192), val=None) -> tuple[BoxHead, list]:
    """Fit the head over the cached views, one view per step (variable sizes), AdamW, one-cycle.

    ``val``: (items, all class texts, all classes); the val mAP of the trained classes is measured
    after every epoch and the best epoch's weights are kept (the curve is returned)."""
    torch.manual_seed(seed)
    head = BoxHead(channels)
    targets = [gaussian_targets(item, classes) for item in items]
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-4)
    total = epochs * len(items)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=total, pct_start=0.05)
    rng = np.random.default_rng(seed)
    t0, step = time.perf_counter(), 0
    curve, best = [], None
    for epoch in range(epochs):
        sums = np.zeros(4)
        for k in rng.permutation(len(items)):
            item, (heat_t, centres) = items[k], targets[k]
            s8, s16, s32 = (item[n].float()[None] for n in ("s8", "s16", "s32"))
            x = head.features(s8, s16, s32)
            heat, size, offset = head.heat(x), head.size(x), head.offset(x)
            loss_heat = focal_loss(heat[0, 0], torch.from_numpy(heat_t))
            loss = loss_heat
            parts = [loss_heat.item(), 0.0, 0.0, 0.0]
            if centres:
                idx = torch.tensor([c[0] for c in centres])
                size_t = torch.tensor([[c[1], c[2]] for c in centres], dtype=torch.float32)
                off_t = torch.tensor([[c[3], c[4]] for c in centres], dtype=torch.float32)
                loss_size = F.l1_loss(size[0].flatten(1).T[idx], size_t)
                loss_off = F.l1_loss(torch.sigmoid(offset[0].flatten(1).T[idx]), off_t)
                loss = loss + loss_size + loss_off
                parts[1:3] = [loss_size.item(), loss_off.item()]
                labelled = [(c[0], c[5]) for c in centres if c[5] >= 0]
                if labelled:
                    cells = x[0].flatten(1).T[torch.tensor([c for c, _ in labelled])]
                    e = F.normalize(head.embed_cells(cells), dim=-1)
                    logits = head.logit_scale * e @ texts.T + head.logit_bias
                    onehot = F.one_hot(torch.tensor([y for _, y in labelled]), len(classes)).float()
                    loss_emb = F.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / len(labelled)
                    loss = loss + loss_emb
                    parts[3] = loss_emb.item()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
            sums += parts
        line = (f"  epoch {epoch + 1}/{epochs}: heat {sums[0] / len(items):.3f} size {sums[1] / len(items):.3f} "
                f"offset {sums[2] / len(items):.3f} embed {sums[3] / len(items):.3f}")
        if val is not None:
            ap = evaluate_head(head.eval(), *val)
            head.train()
            trained = float(np.mean([ap[c] for c in classes if ap[c] is not None]))
            curve.append((epoch + 1, round(trained, 4), ap))
            if best is None or trained > best[0]:
                best = (trained, epoch + 1, copy.deepcopy(head.state_dict()))
            line += f"; val mAP50 of the trained classes {trained:.3f}"
        print(f"{line} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if best is not None:
        head.load_state_dict(best[2])
    return head.eval(), curve


def decode(heat: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, embed: torch.Tensor, k: int = 100,
           min_heat: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peaks of one map of the head's raw outputs (``BoxHead.forward``: logits, log sizes, offset
    logits, raw embeddings), activated as the exported graph does (``BoxNet``): boxes (n, 4) in input
    pixels, heat (n,), unit embeddings (n, D)."""
    heat, offset, embed = torch.sigmoid(heat), torch.sigmoid(offset), F.normalize(embed, dim=1)
    h, w = heat.shape[-2:]
    peaks = (heat * peak_mask(heat)).flatten()
    values, idx = peaks.topk(min(k, peaks.numel()))
    keep = values >= min_heat
    values, idx = values[keep], idx[keep]
    iy, ix = idx // w, idx % w
    off = offset[0].flatten(1)[:, idx]
    sz = size[0].flatten(1)[:, idx].exp()
    cx, cy = (ix + off[0]) * STRIDE, (iy + off[1]) * STRIDE
    bw, bh = sz[0] * STRIDE, sz[1] * STRIDE
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    return boxes.numpy(), values.numpy(), embed[0].flatten(1)[:, idx].T.numpy()


def evaluate_head(head: BoxHead, items: list[dict], texts: np.ndarray, classes: list[str]) -> dict:
    """mAP at IoU 0.5 per class over whole val images; a class's score is heat * sigmoid(s cos + b)."""
    detections = {c: [] for c in classes}
    truths = {c: [] for c in classes}
    scale, bias = head.logit_scale.item(), head.logit_bias.item()
    with torch.inference_mode():
        for n, item in enumerate(items):
            heat, size, offset, embed = head(*(item[k].float()[None] for k in ("s8", "s16", "s32")))
            boxes, values, emb = decode(heat, size, offset, embed)
            prob = 1 / (1 + np.exp(-(scale * emb @ texts.T + bias)))
            for j, c in enumerate(classes):
                detections[c] += [(float(values[i] * prob[i, j]), (n, *boxes[i])) for i in range(len(boxes))]
            for x1, y1, x2, y2, c in item["boxes"]:
                truths[c].append((n, x1, y1, x2, y2))
    ap = {}
    for c in classes:
        per = []  # boxes of different images never match: offset each image far apart
        dets = [(s, (b[1] + 1e5 * b[0], b[2], b[3] + 1e5 * b[0], b[4])) for s, b in detections[c]]
        gts = [(t[1] + 1e5 * t[0], t[2], t[3] + 1e5 * t[0], t[4]) for t in truths[c]]
        dets.sort(key=lambda d: -d[0])
        per = average_precision(dets[:3000], gts)
        ap[c] = None if math.isnan(per) else round(per, 4)
    return ap


def head_arrays(head: BoxHead, meta: dict) -> dict:
    """The head's state as arrays with ``meta_json`` (what export reads)."""
    arrays = {k: v.detach().numpy() for k, v in head.state_dict().items()}
    arrays["meta_json"] = np.array(json.dumps(meta))
    return arrays


def map50s(ap: dict, held: set) -> dict:
    """The per-class AP50s with the means of the trained and of the held-out classes."""
    trained = [v for c, v in ap.items() if c not in held and v is not None]
    unseen = [ap[c] for c in held if ap[c] is not None]
    return {"ap50": ap, "map50_trained": round(float(np.mean(trained)), 4),
            "map50_held_out": round(float(np.mean(unseen)), 4) if unseen else None,
            "held_out_classes": sorted(held)}


def measure(weights: Path, val_items: list[dict], all_texts: np.ndarray, out: Path) -> int:
    """Val mAP50 of a trained head (its held-out classes from its own metadata); the report to ``out``'s .json."""
    from rs_vlm_plugin.modeling.boxnet import load_head

    head, meta = load_head(weights)
    ap = evaluate_head(head.eval(), val_items, all_texts, list(VHR10_CLASSES))
    held = set(meta.get("held_out_classes") or [])
    report = {"weights": str(weights), **map50s(ap, held), "epochs": meta.get("epochs"),
              "best_epoch": meta.get("best_epoch")}
    print(json.dumps(report, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="head weights (.npz); the report goes beside it")
    parser.add_argument("--hold-out", action="store_true", help=f"leave {', '.join(HELD_OUT_CLASSES)} out")
    parser.add_argument("--epochs", type=int, default=8,
                        help="8: the shipped head; on the 6-view cache later epochs overfit (val best at 6 to 8)")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle whose text encoder embeds the classes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the trunk features are cached")
    parser.add_argument("--weights", type=Path, default=None,
                        help="measure this trained head on val instead of training one (report to --out's .json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from rs_vlm_plugin.core.bundle import default_bundle_dir

    t0 = time.perf_counter()
    train, val = split_images(args.data)
    trunk = BoxTrunk(load_efficientnet_lite("efficientnet-lite0")).eval()
    val_items = cached_features(trunk, val, "val", train=False, cache=args.cache)
    all_texts = class_texts(args.bundle or default_bundle_dir(), list(VHR10_CLASSES))
    if args.weights is not None:
        return measure(args.weights, val_items, all_texts, args.out)
    items = cached_features(trunk, train, "train_aug", train=True, cache=args.cache)
    held = set(HELD_OUT_CLASSES) if args.hold_out else set()
    classes = [c for c in VHR10_CLASSES if c not in held]
    if held:
        items = [it for it in items if not any(b[4] in held for b in it["boxes"])]
    texts = torch.from_numpy(all_texts[[VHR10_CLASSES.index(c) for c in classes]])
    print(f"training on {len(items)} views ({len(train)} images), classes {classes}", flush=True)
    head, curve = train_head(items, texts, classes, args.epochs, val=(val_items, all_texts, list(VHR10_CLASSES)))
    ap = evaluate_head(head, val_items, all_texts, list(VHR10_CLASSES))
    report = {**map50s(ap, held), "train_images": len(train), "train_views": len(items),
              "val_images": len(val), "epochs": args.epochs, "best_epoch": max(curve, key=lambda c: c[1])[0],
              "curve": [(e, m) for e, m, _ in curve], "seconds": round(time.perf_counter() - t0, 1),
              "logit_scale": head.logit_scale.item(), "logit_bias": head.logit_bias.item()}
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: report[k] for k in ("map50_trained", "map50_held_out", "held_out_classes", "epochs", "best_epoch")}
    meta.update(stride=STRIDE, channels=list(trunk.channels), trained_on="VHR-10 minus 20 % held back (name hash)")
    np.savez_compressed(args.out, **head_arrays(head, meta))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
