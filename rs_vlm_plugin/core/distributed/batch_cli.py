"""``python -m rs_vlm_plugin batch`` and the archive form of ``index``: many rasters (or one huge
one) in this process or on a Dask cluster (``--dask tcp://scheduler:8786`` or ``--dask local:N``).

    python -m rs_vlm_plugin batch FOLDER_OR_LIST_OR_FILES... -o OUT.gpkg [--dask ADDR] [--max-tiles N]
    python -m rs_vlm_plugin index FOLDER_OR_LIST_OR_FILES... -o OUT.gpkg [--dask ADDR]

Exit codes as the other commands, and 3: the output was written but some rasters failed (each
named on stderr); a rerun of the same command does only those (see :mod:`.manifest`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..bundle import ModelBundle, RuntimeOptions
from ..cli_options import add_plan_options, add_run_options, check_args, model_dir
from ..planning.dris import PlanConfig
from ..errors import RsVlmError
from ..geometry import Extent
from ..progress import ProgressBackend
from ..validation import OutputLock
from .cluster import parse_address
from .inputs import BATCH_PATTERN, LIST_SUFFIXES, expand_inputs
from .manifest import Manifest
from .outputs import write_archive_index, write_captions
from .runner import BatchOutcome, SerialExecutor, cluster_executor, run_batch
from .tasks import RasterJob
from .worker_cache import ModelRef

COMMANDS = ("batch",)
PARTIAL = 3
"""Exit code: written, but some rasters failed."""
DEFAULT_CHUNK_TILES = 256


def add_archive_options(parser: argparse.ArgumentParser) -> None:
    """--dask, --chunk-tiles and --pattern (the batch command, and index over many rasters)."""
    parser.add_argument("--dask", default=None, metavar="ADDRESS",
                        help="run on a Dask cluster: tcp://HOST:PORT of a running `dask scheduler`, or local:N for "
                             "N worker processes on this machine (default: this process)")
    parser.add_argument("--chunk-tiles", type=int, default=DEFAULT_CHUNK_TILES,
                        help="tiles per task (a raster's tiles are split into chunks of whole batches)")
    parser.add_argument("--pattern", default=BATCH_PATTERN, help="file name patterns taken from a folder (;-separated)")


def add_parsers(sub) -> None:
    """Add the batch command to the main parser's subparsers."""
    batch = sub.add_parser("batch", help="caption many rasters into one merged GeoPackage layer (captions)")
    batch.add_argument("inputs", nargs="+", type=Path,
                       help="raster files, folders (their files matching --pattern) or .txt lists of raster paths")
    add_plan_options(batch)
    add_archive_options(batch)
    add_run_options(batch)


def wants_archive(args: argparse.Namespace) -> bool:
    """Whether an ``index`` command names several rasters, a folder, a list, or a cluster."""
    raster = Path(args.raster)
    return bool(args.dask or args.more or raster.is_dir() or raster.suffix.lower() in LIST_SUFFIXES)


@contextmanager
def executor_for(address: str | None, bundle: ModelBundle, model: ModelRef, paths: list[str]) -> Iterator:
    """A Dask executor for the address (connected and checked, :mod:`.preflight`, before any
    work), or this process's."""
    if not address:
        yield SerialExecutor(bundle, model)
        return
    with cluster_executor(parse_address(address), model, paths) as executor:
        yield executor


def run(args: argparse.Namespace, progress: ProgressBackend) -> dict:
    """``batch``: caption every raster, write one merged layer; returns the summary for :func:`report`."""
    return _run_archive(args, list(args.inputs), "describe", progress)


def run_index(args: argparse.Namespace, progress: ProgressBackend) -> dict:
    """``index`` over many rasters, or on a cluster: one index of them all."""
    return _run_archive(args, [args.raster, *args.more], "index", progress)


def _run_archive(args: argparse.Namespace, inputs: list[Path], kind: str, progress: ProgressBackend) -> dict:
    if args.dask:
        parse_address(args.dask)  # a wrong address is a sentence before anything else
    if args.chunk_tiles < 1:
        raise RsVlmError(f"--chunk-tiles must be at least 1, not {args.chunk_tiles}.")
    files = expand_inputs(inputs, args.pattern)
    if kind == "index" and Path(args.output).suffix.lower() != ".gpkg":
        raise RsVlmError(f"The index {args.output} is not a GeoPackage; give a file name ending in .gpkg.")
    plan: PlanConfig = check_args(args, tuple((f, "raster file") for f in files if f.exists()))
    extent = Extent(*args.extent) if getattr(args, "extent", None) else None
    start = time.perf_counter()
    with OutputLock(args.output):
        bundle = ModelBundle.load(model_dir(args), RuntimeOptions(args.device, args.threads))
        model = ModelRef.of(bundle, args.threads)
        jobs = [RasterJob(str(f), f.stem, kind, plan, extent=extent, chunk_tiles=args.chunk_tiles) for f in files]
        manifest = Manifest(args.output, jobs[0].settings() + "\n" + model.fingerprint)
        with executor_for(args.dask, bundle, model, [job.path for job in jobs]) as executor:
            outcome = run_batch(jobs, bundle, executor, progress, model, manifest)
        if not outcome.outcomes:
            for j in sorted(outcome.failures):
                print(f"{jobs[j].name}: {outcome.failures[j]}", file=sys.stderr)
            raise RsVlmError(f"None of the {len(jobs)} rasters could be processed (each is named above); fix them "
                             "and run the command again.")
        failed = {jobs[j].name: outcome.failures[j] for j in sorted(outcome.failures)}
        if kind == "describe":
            written = write_captions(Path(args.output), outcome.finished(), progress, failed)
        else:
            written = write_archive_index(Path(args.output), outcome.finished(), progress, start, failed)
        manifest.clear()
    progress.set_fraction(1.0)
    return summary(args, kind, outcome, written, failed, time.perf_counter() - start)


def summary(args, kind: str, outcome: BatchOutcome, written: Path, failed: dict[str, str], seconds: float) -> dict:
    """What :func:`report` prints."""
    done = [o for o in outcome.finished() if o.name not in failed]
    return {"command": "batch" if kind == "describe" else "index", "archive": True, "output": str(written),
            "rasters": len(outcome.jobs), "done": len(done), "resumed": len(outcome.resumed), "failed": failed,
            "tiles": sum(len(o.records) if kind == "describe" else len(o.tiles) for o in done),
            "tiles_encoded": outcome.tiles, "build_s": round(seconds, 2), "workers": outcome.workers,
            "dask": args.dask, "size_bytes": written.stat().st_size,
            "warnings": [f"{o.name}: {w}" for o in done for w in o.warnings]}


def report(summary: dict, as_json: bool) -> int:
    """Print a summary (warnings and failures on stderr); returns the exit code (3 when some failed)."""
    for warning in summary.get("warnings", []):
        print(f"Warning: {warning}", file=sys.stderr)
    for name, why in summary["failed"].items():
        print(f"Failed: {name}: {why}", file=sys.stderr)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        what = "captions" if summary["command"] == "batch" else "index tiles"
        where = f" on {summary['workers']} Dask workers" if summary["dask"] else ""
        resumed = f" ({summary['resumed']} from an earlier run)" if summary["resumed"] else ""
        print(f"{summary['done']} of {summary['rasters']} rasters{resumed}: {summary['tiles']:,} {what} in "
              f"{summary['build_s']:.1f} s{where}")
        print(f"Wrote {summary['output']}")
    return PARTIAL if summary["failed"] else 0
