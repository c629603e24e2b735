"""Speed and memory benchmarks (run by `python3 build.py bench-speed`); prints figures, writes JSON.

1. Image tower tiles/s: the graph as torch exports it (before the graph passes), the shipped
   graph with every tier (describe) and without the object tier (search, ask, classify, index),
   its float16-storage and int8 copies (with their parity against float32 on real tiles:
   cosine of the tokens, unchanged top-1 scene concept, unchanged captions), at 1 and all
   threads and several batch sizes; torch eager from the project's weights.
2. Planning's share of a job: a default DRIS caption of generated 2560 x 2560 and
   10k x 10k rasters (without overviews, and the 10k with them).
3. Peak memory (VmHWM) of a uniform caption of generated 10k x 10k and 20k x 20k rasters,
   each job in its own process through the command line, GeoPackage written.

Figures depend on what else runs on the machine; the JSON records ``os.getloadavg()`` before
and after. ``--provider cuda`` runs the tower figures on onnxruntime-gpu's CUDA provider.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_rasters import make_raster  # noqa: E402

from rs_vlm_plugin.core.bundle import ModelBundle, RuntimeOptions, default_bundle_dir  # noqa: E402
from rs_vlm_plugin.core.planning.complexity import complexity_map  # noqa: E402
from rs_vlm_plugin.core.planning.dris import PlanConfig  # noqa: E402
from rs_vlm_plugin.core.jobs.config import JobConfig  # noqa: E402
from rs_vlm_plugin.core.jobs.describe import describe  # noqa: E402
from rs_vlm_plugin.core.raster import open_raster  # noqa: E402

SEARCH_TIERS = ("embedding", "regions")


def session_speed(path: Path, tiles: np.ndarray, bundle: ModelBundle, threads: int, batch: int, provider: str,
                  with_objects: bool | None, repeats: int = 3) -> dict:
    """Tiles/s of one ONNX image graph over ``tiles``: best of ``repeats`` by the wall clock, and
    by this process's CPU time times the threads (what the cores would give if nothing else ran)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    names = {i.name for i in sess.get_inputs()}
    x = bundle.preprocess(tiles)
    outputs = [o.name for o in sess.get_outputs()]
    if "embedding" in outputs:
        outputs = ["embedding", "regions"] + (["objects", "routing"] if with_objects is not False else [])
    gate = {"with_objects": np.array(bool(with_objects))} if "with_objects" in names else {}
    sess.run(outputs, {"images": x[:batch], **gate})  # warm-up
    best = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(x), batch):
            sess.run(outputs, {"images": x[i:i + batch], **gate})
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return {"wall": round(len(x) / best, 1), "cpu_x_threads": round(len(x) * threads / cpu, 1)}


def raw_export(work: Path) -> Path:
    """The image tower exported by torch without the graph passes (the graph before issue 13)."""
    import torch

    from rs_vlm_plugin.modeling.export import IMAGE_OUTPUTS

    path = work / "image_encoder_raw.onnx"
    if not path.exists():
        image, _, _ = torch_models()
        torch.onnx.export(image, (torch.zeros(2, 3, 224, 224),), str(path), input_names=["images"],
                          output_names=IMAGE_OUTPUTS,
                          dynamic_axes={"images": {0: "batch"}} | {k: {0: "batch"} for k in IMAGE_OUTPUTS},
                          opset_version=17, dynamo=False)
    return path


def lite0_export(work: Path) -> Path:
    """The bare ImageNet EfficientNet-Lite0 (classifier included), the yardstick of the issue."""
    import torch

    from rs_vlm_plugin.modeling.efficientnet_lite import load_efficientnet_lite

    path = work / "efficientnet_lite0.onnx"
    if not path.exists():
        net = load_efficientnet_lite("efficientnet-lite0").eval()
        torch.onnx.export(net, (torch.zeros(2, 3, 224, 224),), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return path


_TORCH = {}


def torch_models():
    """(image tower, text tower, decoder step) in torch, from the committed weights."""
    if not _TORCH:
        from rs_vlm_plugin.modeling.export import DEFAULT_WEIGHTS, build_models, load_weights
        from rs_vlm_plugin.modeling.text_encoder import SentenceEncoder, load_tokenizer

        arrays, meta, vocab = load_weights(DEFAULT_WEIGHTS)
        kb = json.loads((default_bundle_dir() / "knowledge_base.json").read_text())
        text = SentenceEncoder().eval()
        image, step, _, _ = build_models(arrays, meta, vocab, kb, text, load_tokenizer())
        _TORCH["all"] = (image, text, step)
    return _TORCH["all"]


def torch_speed(bundle: ModelBundle, tiles: np.ndarray, threads: int, batch: int) -> dict:
    """Tiles/s of the torch image tower (every tier), eager, inference mode (as :func:`session_speed`)."""
    import torch

    image, _, _ = torch_models()
    torch.set_num_threads(threads)
    x = torch.from_numpy(bundle.preprocess(tiles))
    with torch.inference_mode():
        image(x[:batch])
        best = cpu = float("inf")
        for _ in range(2):
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(x), batch):
                image(x[i:i + batch])
            best = min(best, time.perf_counter() - start)
            cpu = min(cpu, time.process_time() - start_cpu)
    return {"wall": round(len(x) / best, 1), "cpu_x_threads": round(len(x) * threads / cpu, 1)}


def real_tiles(scene: Path, size: int, grid: int = 8) -> np.ndarray:
    """A ``grid`` x ``grid`` of tiles over a real scene, read as the plugin reads them."""
    from rs_vlm_plugin.modeling.quantize import raster_tiles

    return raster_tiles(scene, size, grid)


def precision_copies(bundle: ModelBundle, work: Path, tiles: np.ndarray) -> dict[str, dict]:
    """float16-storage and int8 copies of the bundle's image graph, with parity on ``tiles``."""
    from rs_vlm_plugin.modeling.quantize import shrink_bundle

    out = {}
    for fmt in ("fp16", "int8", "int8+fp16"):
        folder = work / f"bundle_{fmt.replace('+', '_')}"
        if folder.exists():
            import shutil

            shutil.rmtree(folder)
        report = shrink_bundle(bundle.folder, folder, {"image_encoder": fmt}, tiles)
        p = report["parity"]
        ref, new = ModelBundle.load(bundle.folder, RuntimeOptions("cpu")), ModelBundle.load(folder, RuntimeOptions("cpu"))
        a, b = ref.encode_tiers(tiles, tiers=("embedding",)), new.encode_tiers(tiles, tiers=("embedding",))
        top_a = [r[0][0].name for r in ref.knowledge_base.rank(a["embedding"], "scene", 1, ref.logit_scale)]
        top_b = [r[0][0].name for r in new.knowledge_base.rank(b["embedding"], "scene", 1, new.logit_scale)]
        out[fmt] = {"folder": folder, "bytes": (folder / "image_encoder.onnx").stat().st_size,
                    "embedding_min_cosine": round(p["image_embedding"]["min_cosine"], 5),
                    "regions_min_cosine": round(p["image_regions"]["min_cosine"], 5),
                    "objects_min_cosine": round(p["image_objects"]["min_cosine"], 5),
                    "top1_scene_agreement": round(float(np.mean([x == y for x, y in zip(top_a, top_b)])), 3),
                    "captions_identical": p.get("captions_identical")}
    return out


def tower_figures(bundle: ModelBundle, work: Path, scene: Path, provider: str) -> dict:
    """Tiles/s of every image-graph variant, threads and batch sizes; parity of the copies."""
    tiles = real_tiles(scene, bundle.image_size)  # 64 real tiles
    threads = os.cpu_count() or 1
    shipped = bundle.folder / bundle.manifest["image_encoder"]["file"]
    rows = {}
    raw = raw_export(work)
    rows["bare EfficientNet-Lite0 (yardstick)"] = session_speed(lite0_export(work), tiles, bundle, threads, 16,
                                                              provider, None)
    rows["as exported by torch (before), every tier"] = session_speed(raw, tiles, bundle, threads, 16, provider, None)
    rows["shipped fp32, every tier (describe)"] = session_speed(shipped, tiles, bundle, threads, 16, provider, True)
    rows["shipped fp32, no object tier (search, ask, classify, index)"] = session_speed(
        shipped, tiles, bundle, threads, 16, provider, False)
    copies = precision_copies(bundle, work, tiles)
    for fmt, info in copies.items():
        path = info["folder"] / "image_encoder.onnx"
        info["every_tier_tiles_per_s"] = session_speed(path, tiles, bundle, threads, 16, provider, True)
        info["no_object_tier_tiles_per_s"] = session_speed(path, tiles, bundle, threads, 16, provider, False)
        info["folder"] = str(info["folder"])
    batches = {b: session_speed(shipped, tiles, bundle, threads, b, provider, False) for b in (1, 8, 16, 32)}
    one_thread = {"every tier": session_speed(shipped, tiles, bundle, 1, 16, provider, True),
                  "no object tier": session_speed(shipped, tiles, bundle, 1, 16, provider, False)}
    return {"tiles": len(tiles), "scene": str(scene), "threads": threads, "provider": provider, "batch": 16,
            "tiles_per_s": rows, "precisions": copies, "batch_sizes_no_object_tier": batches,
            "one_thread": one_thread,
            "torch_eager_every_tier": torch_speed(bundle, tiles, threads, 16)}


def planning_share(bundle: ModelBundle, rasters: dict[str, Path]) -> dict:
    """plan_s / wall of a default DRIS caption of each raster (first read of the file included),
    the same without the overview read (the complexity map and the quadtree), and whether the
    overview read adds time to the job or only moves the first pass over the file forward."""
    out = {}
    for name, path in rasters.items():
        with open_raster(path) as source:
            start = time.perf_counter()
            result = describe(source, bundle, config=JobConfig(plan=PlanConfig()))
            wall = time.perf_counter() - start
        t = result.timings
        compute = t["plan_s"] - t["overview_s"]
        out[name] = {"wall_s": round(wall, 2), "plan_s": round(t["plan_s"], 3),
                     "overview_read_s": round(t["overview_s"], 3), "plan_compute_s": round(compute, 3),
                     "plan_share_pct": round(100 * t["plan_s"] / wall, 1),
                     "plan_compute_share_pct": round(100 * compute / wall, 1), "tiles": int(t["tiles"]),
                     "encode_s": round(t["encode_s"], 2), "read_s": round(t["read_s"], 2),
                     "caption_s": round(t["caption_s"], 2),
                     "tile_reads": overview_read_cost(path, [tile.read_extent for tile in result.plan.leaves])}
        # what planning adds to the job: its compute, and what the overview read adds to the reads
        added = compute + max(0.0, out[name]["tile_reads"]["overview_adds_s"])
        out[name]["plan_added_share_pct"] = round(100 * added / wall, 1)
    return out


READ_CHILD = """
import json, sys, time
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.raster import open_raster
path, overview, windows = sys.argv[1], sys.argv[2] == "1", json.loads(sys.argv[3])
with open_raster(path) as source:
    g = source.georef
    start = time.perf_counter()
    if overview:
        source.read_masked(g.extent, *PlanConfig().coarse_shape(g.extent))
    middle = time.perf_counter()
    for w in windows:
        source.read_masked(Extent(*w), 224, 224)
    end = time.perf_counter()
print(json.dumps({"overview_s": middle - start, "tiles_s": end - middle, "total_s": end - start}))
"""


def overview_read_cost(path: Path, windows, repeats: int = 2) -> dict:
    """The plan's tile reads in a fresh process with the file cold, and after the overview read:
    when the second total is no larger, the overview read only moved the file's first pass
    forward (best of ``repeats`` each)."""
    root = Path(__file__).resolve().parents[1]
    arg = json.dumps([w.as_tuple() for w in windows])
    runs = {}
    for label, flag in (("cold_tiles_only", "0"), ("overview_then_tiles", "1")):
        rows = [json.loads(subprocess.run([sys.executable, "-c", READ_CHILD, str(path), flag, arg], check=True,
                                          capture_output=True, text=True, cwd=root,
                                          env={**os.environ, "PYTHONPATH": str(root)}).stdout)
                for _ in range(repeats)]
        best = min(rows, key=lambda r: r["total_s"])
        runs[label] = {k: round(v, 3) for k, v in best.items()}
    runs["overview_adds_s"] = round(runs["overview_then_tiles"]["total_s"] - runs["cold_tiles_only"]["total_s"], 3)
    return runs


def _seconds(fn, *args) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


MEMORY_CHILD = """
import json, sys, time
from rs_vlm_plugin.core import cli
start = time.perf_counter()
code = cli.main(sys.argv[1:])
wall = time.perf_counter() - start
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("MEMORY " + json.dumps({"code": code, "peak_rss_mb": round(peak / 1024, 1), "wall_s": round(wall, 1)}))
"""


def peak_memory(rasters: dict[str, Path], work: Path) -> dict:
    """Peak resident memory of ``caption --uniform`` of each raster, each in a fresh process."""
    out = {}
    root = Path(__file__).resolve().parents[1]
    for name, path in rasters.items():
        gpkg = work / f"memory_{name}.gpkg"
        gpkg.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, "caption", str(path), "--uniform", "-o", str(gpkg),
                               "-q", "--json"], capture_output=True, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")), None)
        if line is None:
            out[name] = {"error": (proc.stderr or proc.stdout)[-800:]}
            continue
        row = json.loads(line[len("MEMORY "):])
        try:  # the command's --json summary: everything printed before the MEMORY line
            summary = json.loads(proc.stdout[:proc.stdout.index("MEMORY ")])
        except ValueError:
            summary = {}
        row["summary"] = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))} if summary else None
        row["timings"] = summary.get("timings") if summary else None
        row["gpkg_mb"] = round(gpkg.stat().st_size / 2**20, 1) if gpkg.exists() else None
        out[name] = row
    return out


def main() -> int:
    """Run the benchmarks and print a summary plus JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=Path(".cache/samples"))
    parser.add_argument("--work", type=Path, default=Path(".cache/bench_speed"))
    parser.add_argument("--out", type=Path, default=Path("out/bench_speed.json"))
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--skip", action="append", default=[], choices=("tower", "planning", "memory"))
    parser.add_argument("--memory-sizes", default="10000,20000")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    scene = args.samples / "demo_scene_large.tif"
    # a run that skips parts keeps the other parts' figures of an earlier run
    report = json.loads(args.out.read_text()) if args.skip and args.out.exists() else {}
    report.update({"loadavg_before": os.getloadavg(), "cpus": os.cpu_count(),
                   "note": "figures are pessimistic where other work shares the CPUs (see loadavg)"})
    bundle = ModelBundle.load(default_bundle_dir(), RuntimeOptions(args.provider))
    if "tower" not in args.skip:
        report["image_tower"] = tower_figures(bundle, args.work, scene, args.provider)
        print(json.dumps(report["image_tower"], indent=1), flush=True)
    if "planning" not in args.skip:
        rasters = {"2560": make_raster(args.work / "scene_2560.tif", 2560, scene),
                   "10000": make_raster(args.work / "scene_10000.tif", 10000, scene),
                   "10000 with overviews": make_raster(args.work / "scene_10000_ovr.tif", 10000, scene, True)}
        report["planning_share"] = planning_share(bundle, rasters)
        overview = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
        report["planning_share"]["complexity_map_512_s"] = round(min(_seconds(complexity_map, overview)
                                                                    for _ in range(3)), 4)
        print(json.dumps(report["planning_share"], indent=1), flush=True)
    if "memory" not in args.skip:
        sizes = [int(s) for s in args.memory_sizes.split(",") if s]
        rasters = {str(n): make_raster(args.work / f"scene_{n}.tif", n, scene) for n in sizes}
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            report["peak_memory_uniform_caption"] = peak_memory(rasters, Path(tmp))
        print(json.dumps(report["peak_memory_uniform_caption"], indent=1), flush=True)
    report["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nFull report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
