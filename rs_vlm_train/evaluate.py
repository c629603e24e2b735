"""Evaluate an ONNX bundle on folders laid out like ``../shared/data`` (or any such folder).

    python3 build.py eval --captions ../shared/data/ucm --split val
    python3 build.py eval --scenes ../shared/data/resisc12/train

``--captions DIR --split NAME``: a ``captions.json`` with ``images: [{filename, class, split,
sentences}]`` and the images beside it; image<->text retrieval R@1/5/10 both directions and
mean recall, every sentence kept (no deduplication).  ``--scenes DIR``: one sub-folder of images
per class; zero-shot accuracy with class names from the folder names (underscores as spaces)
and a prompt ensemble.  Writes a JSON and a Markdown table.  Runs on onnxruntime only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from rs_vlm_plugin.core.bundle import ModelBundle, default_bundle_dir

from .data import load_image, read_captions, read_scene_folders
from .metrics import retrieval_recalls

SCENE_PROMPTS = ("an aerial image of {}.", "a satellite photo of {}.", "there is {} in the image.",
                 "an aerial view of a {} area.")


def encode_files(bundle: ModelBundle, paths: list[Path], batch: int = 32) -> np.ndarray:
    """Embed whole images resized to the model's input size."""
    size = bundle.image_size
    out = []
    for start in range(0, len(paths), batch):
        tiles = np.stack([np.asarray(load_image(p).resize((size, size))) for p in paths[start:start + batch]])
        out.append(bundle.encode_images(tiles, batch_size=len(tiles)))
    return np.concatenate(out)


def eval_captions(bundle: ModelBundle, folder: Path, split: str) -> dict:
    """Retrieval on one split of a captions folder."""
    items = read_captions(folder, split)
    if not items:
        raise SystemExit(f"No images of split {split!r} in {folder / 'captions.json'}.")
    per_image = {len(i.sentences) for i in items}
    if len(per_image) != 1:
        raise SystemExit(f"Every image needs the same number of captions; found {sorted(per_image)}.")
    img = encode_files(bundle, [i.path for i in items])
    txt = bundle.encode_texts([s for i in items for s in i.sentences])
    return {"images": len(items), "captions": len(txt), **retrieval_recalls(img, txt, per_image.pop())}


def eval_scenes(bundle: ModelBundle, folder: Path) -> dict:
    """Zero-shot scene classification with a prompt ensemble per class."""
    pairs = read_scene_folders(folder)
    classes = sorted({c for _, c in pairs})
    prompts = bundle.encode_texts([p.format(c.replace("_", " ")) for c in classes for p in SCENE_PROMPTS])
    class_emb = prompts.reshape(len(classes), len(SCENE_PROMPTS), -1).mean(1)
    class_emb /= np.linalg.norm(class_emb, axis=1, keepdims=True)
    img = encode_files(bundle, [p for p, _ in pairs])
    pred = np.argmax(img @ class_emb.T, axis=1)
    truth = np.asarray([classes.index(c) for _, c in pairs])
    per_class = {c: float(np.mean(pred[truth == k] == k)) for k, c in enumerate(classes)}
    return {"images": len(pairs), "classes": len(classes), "accuracy": float(np.mean(pred == truth)),
            "per_class": per_class}


def markdown(report: dict) -> str:
    """The report as Markdown tables."""
    lines = [f"# Evaluation of {report['model']}", ""]
    if "captions" in report:
        r = report["captions"]
        lines += [f"## Retrieval: {r['folder']} split {r['split']} ({r['images']} images, {r['captions']} captions)", "",
                  "| I2T R@1 | R@5 | R@10 | T2I R@1 | R@5 | R@10 | mR |", "|---|---|---|---|---|---|---|",
                  "| " + " | ".join(f"{r[k]:.2f}" for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                                                            "t2i_r10", "mR")) + " |", ""]
    if "scenes" in report:
        r = report["scenes"]
        lines += [f"## Zero-shot scenes: {r['folder']} ({r['images']} images, {r['classes']} classes)", "",
                  f"Accuracy: {100 * r['accuracy']:.2f} %", "", "| class | accuracy |", "|---|---|"]
        lines += [f"| {c} | {100 * a:.1f} |" for c, a in r["per_class"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the bundled model)")
    parser.add_argument("--captions", type=Path, help="folder with captions.json and its images")
    parser.add_argument("--split", default="val")
    parser.add_argument("--scenes", type=Path, help="folder with one sub-folder of images per class")
    parser.add_argument("--out", type=Path, default=Path("out/eval"))
    args = parser.parse_args(argv)
    if not (args.captions or args.scenes):
        parser.error("give --captions DIR and/or --scenes DIR")
    bundle = ModelBundle.load(args.model or default_bundle_dir())
    report: dict = {"model": bundle.name}
    start = time.perf_counter()
    if args.captions:
        report["captions"] = {"folder": str(args.captions), "split": args.split,
                              **eval_captions(bundle, args.captions, args.split)}
    if args.scenes:
        report["scenes"] = {"folder": str(args.scenes), **eval_scenes(bundle, args.scenes)}
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(report, indent=2))
    (args.out / "eval.md").write_text(markdown(report))
    print(markdown(report))
    print(f"Wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
