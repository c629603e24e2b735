"""The ``index`` and ``search-index`` commands of ``python -m rs_vlm_plugin`` (see :mod:`cli`).

    python -m rs_vlm_plugin index RASTER -o INDEX.gpkg [--max-tiles N] [--uniform] [--overwrite]
    python -m rs_vlm_plugin search-index INDEX.gpkg "query" -o hits.gpkg [--max-hits N] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .bundle import ModelBundle, RuntimeOptions
from .distributed import batch_cli
from .cli_options import add_run_options, check_args, model_dir
from .errors import one_line
from .geometry import Extent
from .gpkg import write_geopackage
from .jobs.index import EmbeddingIndex, build_index
from .jobs.config import JobConfig
from .jobs.query import check_query
from .jobs.results import result_kinds, result_layers
from .progress import ProgressBackend, check_canceled
from .raster import open_raster
from .validation import OutputLock

COMMANDS = ("index", "search-index")


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    """Add the two commands to the main parser's subparsers (``common``: the raster commands' options)."""
    index = sub.add_parser("index", parents=[common], help="encode a raster once into an embedding index (.gpkg)")
    index.add_argument("more", nargs="*", type=Path, metavar="MORE",
                       help="more rasters, folders or .txt lists: one index of them all (see --dask)")
    batch_cli.add_archive_options(index)
    search = sub.add_parser("search-index", help="search an embedding index by text (no raster access)")
    search.add_argument("index", type=Path, help="index GeoPackage written by the index command")
    search.add_argument("query", help="what to look for, e.g. \"a road through a forest\"")
    search.add_argument("--max-hits", type=int, default=JobConfig().max_hits)
    search.add_argument("--min-score", type=float, default=None, help="drop hits below this cosine similarity")
    add_run_options(search)


def run(args: argparse.Namespace, progress: ProgressBackend) -> dict:
    """Check the arguments, run ``index`` or ``search-index``; returns the summary that :func:`report` prints.

    Raises:
        RsVlmError: Bad input (a sentence for the user).
        CancelledError: The user cancelled.
    """
    if args.command == "index" and batch_cli.wants_archive(args):
        return batch_cli.run_index(args, progress)
    if args.command == "index":
        plan = check_args(args, ((args.raster, "raster file"),))
        with OutputLock(args.output):
            bundle = ModelBundle.load(model_dir(args), RuntimeOptions(args.device, args.threads))
            start = time.perf_counter()
            with open_raster(args.raster) as source:
                path = build_index(source, bundle, args.output, Extent(*args.extent) if args.extent else None,
                                   JobConfig(plan=plan, guide_query=args.guide), progress)
        build_s = time.perf_counter() - start
        index = EmbeddingIndex.open(path)
        return {"command": "index", "output": str(path), "tiles": len(index), "build_s": round(build_s, 2),
                "size_bytes": path.stat().st_size, "warnings": index.meta.get("warnings", [])}
    check_args(args, ((args.index, "index file"),), (("--max-hits", args.max_hits),))
    check_query(args.query)
    with OutputLock(args.output):
        bundle = ModelBundle.load(model_dir(args), RuntimeOptions(args.device, args.threads))
        start = time.perf_counter()
        index = EmbeddingIndex.open(args.index)
        open_s = time.perf_counter() - start
        result = index.search(bundle, args.query, args.max_hits, args.min_score)
        progress.set_stage("Writing the GeoPackage")
        write_geopackage(args.output, result_layers(result), result.crs_wkt, kinds=result_kinds(result),
                         finish=lambda _: check_canceled(progress))
    timings = {"open_s": open_s, **{k: v for k, v in result.timings.items() if k.endswith("_s")}}
    return {"command": "search-index", "output": str(args.output), "query": result.query, "tiles": len(index),
            "timings_ms": {k[:-2] + "_ms": round(1000 * v, 2) for k, v in timings.items()},
            "warnings": result.warnings,
            "hits": [{"rank": h.rank, "score": round(h.score, 4), "level": h.level, "gsd_m": round(h.gsd_m, 3),
                      "caption": h.caption} for h in result.hits]}


def report(summary: dict, as_json: bool) -> int | None:
    """Print a summary as JSON or as a few lines (warnings on stderr); an exit code for an archive."""
    if summary.get("archive"):
        return batch_cli.report(summary, as_json)
    for warning in summary.get("warnings", []):
        print(one_line(f"Warning: {warning}"), file=sys.stderr)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    if summary["command"] == "index":
        print(f"Indexed {summary['tiles']} tiles in {summary['build_s']:.1f} s "
              f"({summary['size_bytes'] / 1e6:.1f} MB)")
    else:
        t = summary["timings_ms"]
        print(f"Search index: {summary['query']!r}  ({summary['tiles']} tiles)")
        print(f"open {t['open_ms']:.1f} ms, text {t['text_ms']:.1f} ms, scoring {t['score_ms']:.2f} ms, "
              f"captions {t['caption_ms']:.1f} ms")
        print(f"{'rank':>4}  {'score':>6}  {'level':<7} {'gsd m':>6}  caption")
        for hit in summary["hits"]:
            print(f"{hit['rank']:>4}  {hit['score']:6.3f}  {hit['level']:<7} {hit['gsd_m']:6.2f}  {hit['caption']}")
    print(f"Wrote {summary['output']}")
