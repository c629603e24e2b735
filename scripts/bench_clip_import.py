"""Benchmark of the CLIP import: export time of a full-size random checkpoint, ONNX vs torch speed.

    python scripts/bench_clip_import.py [--arch ViT-B-32] [--work .cache/bench_import] [--out out/bench_import.json]
        [--scenes ../shared/data/resisc12/train --per-class 20]

With --scenes (a folder of <class>/<image> files) it also classifies a few images per class
zero-shot through the torch model and through the ONNX bundle (the runtime's own preprocessing,
tokenizer and prompt ensemble) and reports both accuracies, their difference and how often the
two paths pick the same class.

Prints figures and writes them as JSON; it asserts nothing about speed. The checkpoint has random
weights (the speed and the export do not depend on the values); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rs_vlm_plugin.core.bundle import ModelBundle, RuntimeOptions  # noqa: E402
from rs_vlm_plugin.modeling.clip.configs import get_config  # noqa: E402
from rs_vlm_plugin.modeling.clip.export_clip import ClipImageTiers, ClipTextTower, export_clip_bundle  # noqa: E402
from rs_vlm_plugin.modeling.clip.checkpoint import build_model, load_checkpoint  # noqa: E402
from rs_vlm_plugin.modeling.clip.model import CLIP  # noqa: E402

QUERIES = ["an aerial image of a dense forest", "storage tanks next to a river", "a paved road through farmland",
           "many cars are parked in a parking lot near some buildings", "an airport runway", "a bridge"]


def best_of(fn, repeats: int) -> float:
    """Fastest of ``repeats`` runs after one warm-up, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench_import")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_import.json")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of torch and onnxruntime")
    parser.add_argument("--scenes", type=Path, default=None, help="a labelled folder <class>/<image> (zero-shot check)")
    parser.add_argument("--per-class", type=int, default=20, help="images per class for the zero-shot check")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    threads = args.threads
    torch.set_num_threads(threads)

    config = get_config(args.arch)
    torch.manual_seed(0)
    checkpoint = args.work / f"random-{args.arch}.pt"
    torch.save(CLIP(config).state_dict(), checkpoint)
    size_mb = checkpoint.stat().st_size / 1e6
    bundle_dir = args.work / f"bundle-{args.arch}"
    stages = []
    start = time.perf_counter()
    manifest = export_clip_bundle(checkpoint, bundle_dir, name=f"random {args.arch}", source="benchmark (random)",
                                  progress=lambda value, message: stages.append((round(time.perf_counter() - start, 1),
                                                                                 value, message)),
                                  threads=threads)
    export_s = time.perf_counter() - start
    for elapsed, value, message in stages:
        print(f"  {elapsed:7.1f} s  {value:3.0f}%  {message}")

    bundle = ModelBundle.load(bundle_dir, RuntimeOptions(device="cpu", threads=threads))
    size = bundle.image_size
    tiles = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    model = build_model(config, load_checkpoint(checkpoint))
    image_tower, text_tower = ClipImageTiers(model).eval(), ClipTextTower(model).eval()
    x = torch.from_numpy(bundle.preprocess(tiles))
    tokens = bundle.tokenizer.encode_batch(QUERIES)
    ids = torch.tensor([t.ids for t in tokens])
    mask = torch.tensor([t.attention_mask for t in tokens])

    def torch_image():
        with torch.inference_mode():
            image_tower(x)

    def torch_text():
        with torch.inference_mode():
            for i in range(len(QUERIES)):  # one query at a time, as a search does
                text_tower(ids[i:i + 1], mask[i:i + 1])

    def onnx_text():
        for query in QUERIES:
            bundle.encode_texts([query])

    figures = {
        "arch": args.arch, "threads": threads, "cpu_cores": os.cpu_count(), "machine": platform.machine(),
        "load_average_1min": os.getloadavg()[0],  # other work on the machine slows multi-threaded torch most
        "checkpoint_mb": round(size_mb, 1), "export_seconds": round(export_s, 1),
        "parity_max_abs_diff": manifest["parity_max_abs_diff"],
        "onnx_mb": {f: round((bundle_dir / f).stat().st_size / 1e6, 1) for f in ("image_encoder.onnx", "text_encoder.onnx")},
        "image_ms_per_tile_batch16": {
            "onnx": round(1000 * best_of(lambda: bundle.encode_tiers(tiles, batch_size=args.batch), args.repeats) / args.batch, 2),
            "torch": round(1000 * best_of(torch_image, args.repeats) / args.batch, 2)},
        "text_ms_per_query": {
            "onnx": round(1000 * best_of(onnx_text, args.repeats) / len(QUERIES), 2),
            "torch": round(1000 * best_of(torch_text, args.repeats) / len(QUERIES), 2)},
    }
    if args.scenes is not None:
        figures["zero_shot"] = zero_shot_paths(bundle, image_tower, text_tower, args.scenes, args.per_class, args.batch)
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


def zero_shot_paths(bundle: ModelBundle, image_tower, text_tower, folder: Path, per_class: int, batch: int) -> dict:
    """Zero-shot accuracy through torch and through the ONNX bundle on the same images and prompts."""
    from PIL import Image

    from rs_vlm_plugin.core.jobs.classify import CLASS_PROMPTS, class_embeddings

    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    names = [c.replace("_", " ") for c in classes]
    files, labels = [], []
    for k, name in enumerate(classes):
        chosen = sorted((folder / name).iterdir())[-per_class:]  # the last files of each class
        files += chosen
        labels += [k] * len(chosen)
    size = bundle.image_size
    tiles = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files])
    labels = np.asarray(labels)
    onnx_text = class_embeddings(bundle, names)  # the runtime's prompt ensemble through the ONNX text tower
    onnx_image = np.concatenate([bundle.encode_images(tiles[i:i + batch]) for i in range(0, len(tiles), batch)])
    prompts = [p.format(c) for c in names for p in CLASS_PROMPTS]
    enc = bundle.tokenizer.encode_batch(prompts)
    with torch.inference_mode():
        emb = text_tower(torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])).numpy()
        torch_image = np.concatenate([image_tower(torch.from_numpy(bundle.preprocess(tiles[i:i + batch])))[0].numpy()
                                      for i in range(0, len(tiles), batch)])
    torch_text = emb.reshape(len(names), len(CLASS_PROMPTS), -1).mean(1)
    torch_text /= np.linalg.norm(torch_text, axis=1, keepdims=True)
    pred_onnx = (onnx_image @ onnx_text.T).argmax(1)
    pred_torch = (torch_image @ torch_text.T).argmax(1)
    acc_onnx, acc_torch = float((pred_onnx == labels).mean()), float((pred_torch == labels).mean())
    return {"images": len(files), "classes": len(classes), "accuracy_torch": round(100 * acc_torch, 2),
            "accuracy_onnx": round(100 * acc_onnx, 2), "difference_points": round(100 * (acc_onnx - acc_torch), 2),
            "same_prediction": round(100 * float((pred_onnx == pred_torch).mean()), 2),
            "max_abs_diff_image_embedding": float(np.abs(onnx_image - torch_image).max()),
            "note": "random weights: accuracy is chance level; the figure that matters is the torch/ONNX difference"}


if __name__ == "__main__":
    sys.exit(main())
