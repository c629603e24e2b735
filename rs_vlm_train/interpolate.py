"""Weight-space interpolation of two trained models (how version 4 was made), and the presence threshold
calibrated again on an exported bundle.

    git show 644ea62:rs_vlm_plugin/resources/weights/rs_vlm_lite0.npz > out/v3.npz     # version 3
    .venv/bin/python -m rs_vlm_train.interpolate mix --base out/v3.npz --tuned out/train_v4/rs_vlm_lite0.npz \\
        --alpha 0.35 --out out/v4_mix.npz
    .venv/bin/python -m rs_vlm_plugin.modeling.export --weights out/v4_mix.npz --out out/v4_mix_bundle
    .venv/bin/python -m rs_vlm_train.interpolate calibrate --model out/v4_mix_bundle --data ../shared/data \\
        --weights out/v4_mix.npz

``mix``: every array of the image side (tier heads, fusion and experts, the head convolution, the opened MBConv
blocks, the mean training image) becomes ``alpha * tuned + (1 - alpha) * base``, where a block the base did not
train is the base's ImageNet block; the caption decoder, the vocabulary and the calibrations are the tuned
model's (WiSE-FT, Wortsman et al. 2022). ``calibrate``: the "is there X?" threshold over every (UCM val image,
UCM class) pair with the runtime's presence score, written into the weights' metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def imagenet_blocks(arrays: dict, backbone: str = "efficientnet-lite0") -> dict:
    """The ImageNet state of the ``image.top.blocks.*`` arrays that ``arrays`` names."""
    from rs_vlm_plugin.modeling.efficientnet_lite import load_efficientnet_lite

    net = load_efficientnet_lite(backbone, pretrained=True)
    opened = sorted({int(k.split(".")[3]) for k in arrays if k.startswith("image.top.blocks.")})
    if not opened:
        return {}
    first = len(net._blocks) - (max(opened) + 1)
    return {f"image.top.blocks.{j}.{k}": v.numpy() for j in opened
            for k, v in net._blocks[first + j].state_dict().items()}


def mix(base: dict, tuned: dict, alpha: float) -> tuple[dict, list[str]]:
    """The interpolated arrays and the names of those interpolated."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    base = {**imagenet_blocks(tuned), **base}
    out, mixed = dict(tuned), []
    for key, value in tuned.items():
        if not key.startswith(("image.", "stats.")) or key.endswith("num_batches_tracked"):
            continue
        if key in base and base[key].shape == value.shape:
            out[key] = (alpha * value.astype(np.float64) + (1 - alpha) * base[key].astype(np.float64)).astype(value.dtype)
            mixed.append(key)
    return out, mixed


def calibrate(bundle_dir: Path, data: Path) -> dict:
    """The presence threshold of an exported bundle on UCM val (``evaluation.calibrate_presence``'s pairs)."""
    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.core.qa import calibrate_threshold, presence_scores, subject_prompts
    from rs_vlm_train.classes import readable
    from rs_vlm_train.data import read_captions
    from rs_vlm_train.evaluate import encode_files

    bundle = ModelBundle.load(bundle_dir)
    items = read_captions(Path(data) / "ucm", "val")
    tiers = encode_files(bundle, [i.path for i in items])
    labels = np.asarray([i.label for i in items])
    scores, positive = [], []
    for c in sorted(set(labels)):
        emb = bundle.encode_texts(subject_prompts(readable(c))).mean(0)
        scores.append(presence_scores(tiers["embedding"], tiers["regions"], emb / np.linalg.norm(emb),
                                      alternatives=bundle.knowledge_base.embeddings, logit_scale=bundle.logit_scale))
        positive.append(labels == c)
    threshold, accuracy = calibrate_threshold(np.concatenate(scores), np.concatenate(positive))
    return {"threshold": float(threshold), "balanced_accuracy": 100 * float(accuracy),
            "pairs": int(sum(len(s) for s in scores)), "score": "contrastive presence probability (core/qa.py)",
            "calibrated_on": "UCM val, every image against every class name, on the exported bundle"}


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("mix", help="interpolate two weight files")
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--tuned", type=Path, required=True)
    p.add_argument("--alpha", type=float, required=True, help="share of the tuned model")
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("calibrate", help="the presence threshold of an exported bundle")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--weights", type=Path, help="write the threshold into these weights' metadata")
    args = parser.parse_args(argv)
    if args.command == "mix":
        base, tuned = dict(np.load(args.base)), dict(np.load(args.tuned))
        out, mixed = mix(base, tuned, args.alpha)
        meta = json.loads(str(tuned["meta_json"]))
        meta["interpolation"] = {"alpha": args.alpha, "base": args.base.name, "tuned": args.tuned.name,
                                 "arrays": len(mixed), "rule": "alpha * tuned + (1 - alpha) * base on the image side; "
                                 "the decoder and the calibrations are the tuned model's",
                                 "reference": "weight-space ensembling, WiSE-FT (Wortsman et al. 2022)"}
        out["meta_json"] = np.array(json.dumps(meta))
        np.savez_compressed(args.out, **out)
        print(f"{len(mixed)} arrays interpolated at alpha {args.alpha} -> {args.out}")
        return 0
    qa = calibrate(args.model, args.data)
    print(json.dumps(qa, indent=1))
    if args.weights:
        arrays = dict(np.load(args.weights))
        meta = json.loads(str(arrays["meta_json"]))
        meta["qa"] = qa
        arrays["meta_json"] = np.array(json.dumps(meta))
        np.savez_compressed(args.weights, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
