"""Soak benchmark (run by `python3 build.py bench-soak`): many jobs in one process, resident memory.

A long QGIS session runs job after job in one process with the model loaded once; memory that
grows with every job would end it. This runs 200 jobs (describe, search, classify, ask and a
search of an embedding index, in turn) on a seeded generated GeoTIFF, each checked, locked and
written to a GeoPackage as the command line does, and prints the resident set size (VmRSS of
/proc/self/status) after every 20 jobs. The growth is measured from the end of the warm-up
(the first 20 jobs: ONNX sessions, caches and allocator pools fill up there).

Writes out/bench_soak.json. No assertion on any figure.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import statistics
import time
from pathlib import Path

from rs_vlm_plugin.core.bundle import ModelBundle, RuntimeOptions, default_bundle_dir
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.gpkg import write_geopackage
from rs_vlm_plugin.core.jobs.index import EmbeddingIndex, build_index
from rs_vlm_plugin.core.jobs.ask import ask
from rs_vlm_plugin.core.jobs.classify import classify, split_classes
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.describe import describe
from rs_vlm_plugin.core.jobs.results import result_kinds, result_layers
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.progress import NullProgress
from rs_vlm_plugin.core.raster import open_raster
from rs_vlm_plugin.core.validation import JobCheck, OutputLock, check_job

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("describe", "search", "classify", "ask", "search-index")
QUERIES = ("a road", "buildings with shadows", "trees", "a field", "a parking lot")
QUESTIONS = ("is there a road?", "what is this area?", "where are the trees?", "how much of the area is forest?")
CLASSES = ("forest, road, buildings, farmland", "water, trees, houses", "")
WARM_UP = 20


def rss_mb() -> float:
    """Resident memory of this process in MB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS is missing from /proc/self/status")


def make_raster(folder: Path) -> Path:
    """The seeded 512 x 512 test scene of tests/data/make_geotiffs.py."""
    spec = importlib.util.spec_from_file_location("make_geotiffs", ROOT / "tests" / "data" / "make_geotiffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_all(folder, seed=0)["scene"]


def run_job(k: int, raster: Path, index: Path, bundle: ModelBundle, output: Path, config: JobConfig) -> str:
    """Job number ``k`` (its kind in turn); returns the kind."""
    kind = KINDS[k % len(KINDS)]
    source_file = index if kind == "search-index" else raster
    check_job(JobCheck(inputs=((source_file, "file"),), output=output, model_dir=bundle.folder, overwrite=True))
    with OutputLock(output):
        if kind == "search-index":
            result = EmbeddingIndex.open(index).search(bundle, QUERIES[k % len(QUERIES)], config.max_hits)
        else:
            with open_raster(raster) as source:
                progress = NullProgress()
                if kind == "describe":
                    result = describe(source, bundle, None, config, progress)
                elif kind == "search":
                    result = search(source, bundle, QUERIES[k % len(QUERIES)], None, config, progress)
                elif kind == "classify":
                    result = classify(source, bundle, split_classes(CLASSES[k % len(CLASSES)]), None, config,
                                      progress)
                else:
                    result = ask(source, bundle, QUESTIONS[k % len(QUESTIONS)], None, config, progress)
        write_geopackage(output, result_layers(result), result.crs_wkt, kinds=result_kinds(result))
    return kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--every", type=int, default=20, help="print memory after this many jobs")
    parser.add_argument("--max-tiles", type=int, default=8)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench_soak")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_soak.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    raster = make_raster(args.work / "data")
    start_rss = rss_mb()
    bundle = ModelBundle.load(default_bundle_dir(), RuntimeOptions("cpu"))
    config = JobConfig(plan=PlanConfig(max_tiles=args.max_tiles))
    with open_raster(raster) as source:
        index = build_index(source, bundle, args.work / "scene.rsvlm-index.gpkg", None, config)
    output = args.work / "job.gpkg"
    samples, seconds = [], {kind: [] for kind in KINDS}
    print(f"{'jobs':>5} {'RSS MB':>8} {'s/job':>6}")
    started = time.perf_counter()
    for k in range(args.jobs):
        t0 = time.perf_counter()
        kind = run_job(k, raster, index, bundle, output, config)
        seconds[kind].append(time.perf_counter() - t0)
        if (k + 1) % args.every == 0 or k + 1 == args.jobs:
            gc.collect()
            rss = rss_mb()
            samples.append({"jobs": k + 1, "rss_mb": round(rss, 1)})
            print(f"{k + 1:>5} {rss:8.1f} {(time.perf_counter() - started) / (k + 1):6.2f}", flush=True)
    after_warm_up = next((s["rss_mb"] for s in samples if s["jobs"] >= WARM_UP), samples[0]["rss_mb"])
    report = {
        "jobs": args.jobs, "kinds": list(KINDS), "max_tiles": args.max_tiles, "raster": "512 x 512 px scene (seed 0)",
        "rss_before_model_mb": round(start_rss, 1), "rss_after_warm_up_mb": after_warm_up,
        "rss_final_mb": samples[-1]["rss_mb"],
        "growth_after_warm_up_mb": round(samples[-1]["rss_mb"] - after_warm_up, 1),
        "peak_sampled_mb": max(s["rss_mb"] for s in samples), "samples": samples,
        "median_s": {kind: round(statistics.median(v), 3) for kind, v in seconds.items() if v},
        "total_s": round(time.perf_counter() - started, 1), "machine": platform.platform(),
    }
    print(f"growth after the first {WARM_UP} jobs: {report['growth_after_warm_up_mb']:+.1f} MB "
          f"({after_warm_up:.1f} -> {report['rss_final_mb']:.1f} MB)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
