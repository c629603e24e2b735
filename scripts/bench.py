"""Benchmarks that print figures (run by `python3 build.py bench`).

1. DRIS vs the uniform full-resolution grid on the same scene, in one run: tiles and pixels
   encoded, wall time of the whole describe job.
2. Image tower speed: tiles per second with onnxruntime vs torch eager (same weights, batch 16).
3. ONNX-vs-torch parity of every exported graph (largest absolute difference, batch sizes 1, 3, 5).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from rs_vlm_plugin.core.bundle import ModelBundle, default_bundle_dir
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.describe import describe
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.raster import open_raster


def dris_vs_uniform(bundle: ModelBundle, scene: Path, max_tiles: int) -> dict:
    """Describe the same scene with DRIS and with the uniform grid."""
    rows = {}
    with open_raster(scene) as source:
        for name, plan in (("dris", PlanConfig(max_tiles=max_tiles)), ("uniform", PlanConfig(uniform=True))):
            start = time.perf_counter()
            result = describe(source, bundle, config=JobConfig(plan=plan))
            wall = time.perf_counter() - start
            encoded = int(result.timings["tiles"])
            rows[name] = {"leaves": result.plan.n_tiles, "tiles_encoded": encoded,
                          "pixels_encoded": encoded * bundle.image_size ** 2, "max_depth": result.plan.max_depth,
                          "wall_s": round(wall, 2), "global_caption": result.global_caption}
        rows["native_gsd_m"] = source.georef.native_gsd_m
        rows["size_px"] = [source.georef.width, source.georef.height]
    rows["tile_ratio"] = round(rows["uniform"]["tiles_encoded"] / rows["dris"]["tiles_encoded"], 2)
    rows["speedup"] = round(rows["uniform"]["wall_s"] / rows["dris"]["wall_s"], 2)
    return rows


def _top_object(result, x: float, y: float) -> str | None:
    for record in result.by_level()["object"]:
        e = record.extent
        if e.xmin <= x < e.xmax and e.ymin <= y < e.ymax:
            return record.concepts[0][0] if record.concepts else None
    return None


def budget_sweep(bundle: ModelBundle, scene: Path, budgets: tuple[int, ...]) -> list[dict]:
    """DRIS at several budgets against the uniform grid on one scene.

    Agreement: the share of uniform full-resolution leaves whose best object concept is the
    same as that of the DRIS leaf covering the leaf's centre (1.0 = DRIS says what the full
    grid says everywhere).
    """
    rows = []
    with open_raster(scene) as source:
        start = time.perf_counter()
        uniform = describe(source, bundle, config=JobConfig(plan=PlanConfig(uniform=True)))
        uniform_s = time.perf_counter() - start
        reference = [(r.extent.center, r.concepts[0][0]) for r in uniform.by_level()["object"]]
        for budget in budgets:
            start = time.perf_counter()
            dris = describe(source, bundle, config=JobConfig(plan=PlanConfig(max_tiles=budget)))
            wall = time.perf_counter() - start
            agree = np.mean([_top_object(dris, x, y) == concept for (x, y), concept in reference])
            rows.append({"budget": budget, "leaves": dris.plan.n_tiles, "tiles_encoded": int(dris.timings["tiles"]),
                         "wall_s": round(wall, 2), "agreement": round(float(agree), 3)})
        rows.append({"budget": "uniform", "leaves": uniform.plan.n_tiles, "tiles_encoded": int(uniform.timings["tiles"]),
                     "wall_s": round(uniform_s, 2), "agreement": 1.0})
    return rows


def tower_speed(bundle: ModelBundle, n: int = 64, batch: int = 16) -> dict:
    """Tiles per second through the image tower (all three tiers): onnxruntime vs torch eager; and
    the decoder's beam search per tile."""
    import torch

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (n, bundle.image_size, bundle.image_size, 3), dtype=np.uint8)
    bundle.encode_tiers(tiles[:batch], batch_size=batch)  # warm-up
    start = time.perf_counter()
    tiers = bundle.encode_tiers(tiles, batch_size=batch)
    onnx_s = time.perf_counter() - start
    caption_s = None
    if bundle.has_decoder:
        sub = {k: v[:batch] for k, v in tiers.items()}
        bundle.caption({k: v[:2] for k, v in sub.items()})  # warm-up
        start = time.perf_counter()
        bundle.caption(sub)
        caption_s = time.perf_counter() - start
    image, _, _ = _torch_models(bundle)
    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(bundle.preprocess(tiles))
    with torch.inference_mode():
        image(x[:batch])
        start = time.perf_counter()
        for i in range(0, n, batch):
            image(x[i:i + batch])
        torch_s = time.perf_counter() - start
    return {"tiles": n, "batch": batch, "threads": os.cpu_count(),
            "onnx_tiles_per_s": round(n / onnx_s, 1), "torch_tiles_per_s": round(n / torch_s, 1),
            "onnx_ms_per_tile": round(1000 * onnx_s / n, 2), "torch_ms_per_tile": round(1000 * torch_s / n, 2),
            "onnx_speedup": round(torch_s / onnx_s, 2),
            "caption_ms_per_tile": round(1000 * caption_s / batch, 1) if caption_s is not None else None}


_MODELS = {}


def _torch_models(bundle: ModelBundle):
    """(image tower, text tower, decoder step) in torch, from the committed weights."""
    if not _MODELS:
        import json

        from rs_vlm_plugin.modeling.export import DEFAULT_WEIGHTS, build_models, load_weights
        from rs_vlm_plugin.modeling.text_encoder import SentenceEncoder, load_tokenizer

        arrays, meta, vocab = load_weights(DEFAULT_WEIGHTS)
        kb = json.loads((bundle.folder / "knowledge_base.json").read_text())
        text = SentenceEncoder().eval()
        image, step, _, _ = build_models(arrays, meta, vocab, kb, text, load_tokenizer())
        _MODELS["all"] = (image, text, step)
    return _MODELS["all"]


def parity(bundle: ModelBundle) -> dict:
    """Largest |torch - onnx| of every exported graph over batch sizes 1, 3, 5."""
    from rs_vlm_plugin.modeling.export import validate_decoder, validate_image, validate_text
    from rs_vlm_plugin.modeling.text_encoder import load_tokenizer

    image, text, step = _torch_models(bundle)
    folder = bundle.folder
    out = {"image_encoder": validate_image(image, folder / "image_encoder.onnx", bundle.image_size),
           "text_encoder": validate_text(text, load_tokenizer(), folder / "text_encoder.onnx")}
    if step is not None:
        out["decoder"] = validate_decoder(step, image, folder / "decoder.onnx", bundle.image_size)
    return out


def main() -> int:
    """Run every benchmark and print a table plus JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=Path, default=Path(".cache/samples"))
    parser.add_argument("--data", type=Path, default=None, help="../shared/data for the NAIP scenes")
    parser.add_argument("--max-tiles", type=int, default=PlanConfig().max_tiles)
    parser.add_argument("--out", type=Path, default=Path("out/bench.json"))
    args = parser.parse_args()
    bundle = ModelBundle.load(default_bundle_dir())
    report = {"providers": bundle.providers}
    scenes = {"demo (NEON 10 cm, 1249x1035)": args.samples / "demo_scene.tif",
              "demo large (NEON 10 cm, 2299x2472)": args.samples / "demo_scene_large.tif"}
    if args.data:
        for tif in sorted((args.data / "scenes" / "naip").glob("*.tif")):
            scenes[f"NAIP {tif.stem}"] = tif
    report["dris_vs_uniform"] = {}
    for name, path in scenes.items():
        report["dris_vs_uniform"][name] = dris_vs_uniform(bundle, path, args.max_tiles)
    report["budget_sweep_large_demo"] = budget_sweep(bundle, scenes["demo large (NEON 10 cm, 2299x2472)"],
                                                     (8, 16, 24, 32, 48))
    start = time.perf_counter()
    with open_raster(scenes["demo (NEON 10 cm, 1249x1035)"]) as source:
        search(source, bundle, "a paved road")
    report["search_wall_s"] = round(time.perf_counter() - start, 2)
    report["image_tower_speed"] = tower_speed(bundle)
    report["parity_max_abs_diff"] = parity(bundle)

    print("\nDRIS vs uniform full-resolution grid (describe job, global + regions + leaves encoded)")
    print(f"{'scene':<38} {'DRIS tiles':>10} {'uniform':>8} {'ratio':>6} {'DRIS s':>7} {'unif. s':>8} {'speed-up':>8}")
    for name, row in report["dris_vs_uniform"].items():
        print(f"{name:<38} {row['dris']['tiles_encoded']:>10} {row['uniform']['tiles_encoded']:>8} "
              f"{row['tile_ratio']:>6} {row['dris']['wall_s']:>7} {row['uniform']['wall_s']:>8} {row['speedup']:>8}")
    print("\nDRIS budget sweep on the large demo scene (agreement of the best object concept with the uniform grid)")
    print(f"{'budget':>8} {'leaves':>7} {'encoded':>8} {'wall s':>7} {'agreement':>9}")
    for row in report["budget_sweep_large_demo"]:
        print(f"{row['budget']:>8} {row['leaves']:>7} {row['tiles_encoded']:>8} {row['wall_s']:>7} {row['agreement']:>9}")
    s = report["image_tower_speed"]
    print(f"\nImage tower, batch {s['batch']}, {s['threads']} threads: onnxruntime {s['onnx_tiles_per_s']} tiles/s "
          f"({s['onnx_ms_per_tile']} ms/tile) vs torch eager {s['torch_tiles_per_s']} tiles/s "
          f"({s['torch_ms_per_tile']} ms/tile): x{s['onnx_speedup']}")
    if s.get("caption_ms_per_tile") is not None:
        print(f"Caption decoder (beam 3, onnxruntime): {s['caption_ms_per_tile']} ms per tile")
    p = report["parity_max_abs_diff"]
    print("Parity max |torch - onnx|: " + ", ".join(f"{k} {v:.2e}" for k, v in p.items()))
    print(f"Search job on the demo scene: {report['search_wall_s']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nFull report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
