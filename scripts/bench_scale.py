"""Scale-out benchmark (run by `python3 build.py bench-scale`): batch captioning of a folder of
rasters in this process, then on a Dask LocalCluster of 1 and of 2 worker processes.

The folder holds seeded generated GeoTIFFs (tests/data/make_geotiffs.py's scene, with other
seeds) and the sample rasters of .cache/samples. Each run captions all of them with the same
settings; its wall time is taken from the first task to the last result (the cluster is started
before, its start is timed apart), and the outputs of all runs are compared record for record.
Prints figures (tiles/s, rasters/min, speed-up, resident memory per worker) and writes
out/bench_scale.json. No assertion on any figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import time
from pathlib import Path

from rs_vlm_plugin.core.bundle import ModelBundle, RuntimeOptions, default_bundle_dir
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.progress import NullProgress
from rs_vlm_plugin.core.validation import model_tile_size
from rs_vlm_plugin.core.distributed.cluster import DaskAddress, connect
from rs_vlm_plugin.core.distributed.runner import DaskExecutor, SerialExecutor, run_batch
from rs_vlm_plugin.core.distributed.tasks import RasterJob
from rs_vlm_plugin.core.distributed.worker_cache import ModelRef

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ("demo_scene.tif", "OSBS_029.tif")


def make_folder(folder: Path, n_generated: int) -> list[Path]:
    spec = importlib.util.spec_from_file_location("make_geotiffs", ROOT / "tests" / "data" / "make_geotiffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(n_generated):
        path = folder / f"generated_{k:02d}.tif"
        data = module.scene_array(np.random.default_rng(100 + k), 512)
        module._write(path, data, module.CRS.from_epsg(26914),
                      module.from_origin(module.UTM_ORIGIN[0] + 256 * k, module.UTM_ORIGIN[1], module.PIXEL_M,
                                         module.PIXEL_M))
        files.append(path)
    for name in SAMPLES:
        sample = ROOT / ".cache" / "samples" / name
        if sample.exists():
            shutil.copy(sample, folder / name)
            files.append(folder / name)
    return files


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def signature(outcome) -> list:
    return [(r.source, r.level, r.caption, r.score, r.extent) for o in outcome.finished() for r in o.records]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench_scale")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_scale.json")
    parser.add_argument("--generated", type=int, default=8, help="generated 512 x 512 rasters")
    parser.add_argument("--max-tiles", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    files = make_folder(args.work, args.generated)
    folder = default_bundle_dir()
    bundle = ModelBundle.load(folder, RuntimeOptions("cpu", 0))
    model = ModelRef.of(bundle)
    plan = PlanConfig(max_tiles=args.max_tiles, tile_size=model_tile_size(folder))
    jobs = [RasterJob(str(f), f.stem, "describe", plan) for f in files]
    runs, reference = [], None
    configs = [("this process", 0)] + [(f"local:{n}", n) for n in args.workers]
    for label, n in configs:
        start = time.perf_counter()
        if n == 0:
            executor, client_cm, started_s = SerialExecutor(bundle, model), None, 0.0
            outcome = run_batch(jobs, bundle, executor, NullProgress(), model)
            worker_mb = [rss_mb()]
        else:
            with connect(DaskAddress(local_workers=n)) as client:
                executor = DaskExecutor(client, model)
                started_s = time.perf_counter() - start
                outcome = run_batch(jobs, bundle, executor, NullProgress(), model)
                worker_mb = [v / 2**20 for v in client.run(lambda: __import__("psutil").Process().memory_info().rss).values()]
        seconds = outcome.seconds
        same = reference is None or signature(outcome) == reference
        reference = reference or signature(outcome)
        runs.append({"run": label, "workers": max(1, n), "cluster_start_s": round(started_s, 2), "run_s": round(seconds, 2),
                     "rasters": len(jobs), "failed": len(outcome.failures), "tiles": outcome.tiles,
                     "tiles_per_s": round(outcome.tiles / seconds, 2), "rasters_per_min": round(60 * len(jobs) / seconds, 1),
                     "rss_mb_per_worker": [round(m, 1) for m in worker_mb], "identical_to_first": same})
        print(f"{label:>13}: {outcome.tiles} tiles of {len(jobs)} rasters in {seconds:6.1f} s "
              f"(+{started_s:4.1f} s cluster start) = {outcome.tiles / seconds:5.2f} tiles/s, "
              f"{60 * len(jobs) / seconds:5.1f} rasters/min; RSS per worker "
              f"{', '.join(f'{m:.0f}' for m in worker_mb)} MB; identical output: {same}")
    base = next(r for r in runs if r["run"] == "local:1") if any(r["run"] == "local:1" for r in runs) else runs[0]
    for r in runs:
        r["speedup_vs_local1"] = round(base["run_s"] / r["run_s"], 2)
    print("speed-up against local:1: " + ", ".join(f"{r['run']} {r['speedup_vs_local1']:.2f}x" for r in runs))
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "note":
                          "2 cores shared with a training run at higher priority; this ran under nice -n 19"},
              "settings": {"max_tiles": args.max_tiles, "files": [f.name for f in files],
                           "plan": dataclasses.asdict(plan)}, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
