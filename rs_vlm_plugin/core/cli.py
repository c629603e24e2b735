"""Command line: ``python -m rs_vlm_plugin caption|search|classify|ask|index RASTER ...``,
``search-index INDEX ...``, ``batch RASTERS... [--dask ADDRESS]`` and ``models list|install|remove``
(no QGIS needed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import traceback

from . import index_cli
from .bundle import ModelBundle, RuntimeOptions
from .cli_options import (
    add_answer_options,
    answer_job_options,
    check_args,
    common_raster_parser,
    model_dir,
    plan_job_options,
)
from .distributed import batch_cli
from .errors import CancelledError, RsVlmError, one_line
from .geometry import Extent
from .gpkg import write_geopackage
from .jobs.classify import split_classes
from .jobs.config import JobConfig
from .jobs.query import check_query
from .jobs.results import AnswerResult, ClassifyResult, SearchResult, result_kinds, result_layers
from .jobs.run import run_job
from .models import cli as models_cli
from .planning.dris import PlanConfig
from .progress import ProgressBackend, TerminalProgress, check_canceled
from .qa import parse_question
from .raster import open_raster
from .validation import OutputLock

INTERRUPTED = "Interrupted; no output was written."
INTERNAL_ERROR = ("RS-VLM stopped on an unexpected error (the traceback is above); please report it "
                  "with the command you ran.")

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rs_vlm_plugin",
                                     description="Caption, search, classify or ask about aerial imagery with RS-VLM.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = common_raster_parser()
    sub.add_parser("caption", parents=[common], help="captions at three levels")
    search_parser = sub.add_parser("search", parents=[common], help="find tiles matching a text")
    search_parser.add_argument("query", help="what to look for, e.g. \"a road through a forest\"")
    search_parser.add_argument("--top-k", type=int, default=10)
    add_answer_options(search_parser)
    classify_parser = sub.add_parser("classify", parents=[common], help="classify the tiles into your classes")
    classify_parser.add_argument("classes", nargs="?", default="",
                                 help="comma-separated class names (default: the knowledge base's scene concepts)")
    ask_parser = sub.add_parser("ask", parents=[common], help="answer a question about the area")
    ask_parser.add_argument("question", help="\"is there X?\", \"what is this area?\", \"where is X?\", "
                                             "\"how much of the area is X?\"")
    add_answer_options(ask_parser)
    index_cli.add_parsers(sub, common)
    batch_cli.add_parsers(sub)
    models_cli.add_parsers(sub)
    return parser


def job_config(args: argparse.Namespace, plan: PlanConfig) -> JobConfig:
    """The job settings from parsed (and checked) arguments."""
    return JobConfig(plan=plan, max_hits=getattr(args, "top_k", JobConfig().max_hits), **plan_job_options(args),
                     **answer_job_options(args))


def format_table(result, width: int = 100) -> str:
    """A short terminal table of the results."""
    lines = []
    if isinstance(result, ClassifyResult):
        lines.append(f"Classify: {len(result.records)} tiles into {len(result.classes)} classes")
        lines.append("Whole view: " + ", ".join(f"{c} {p:.2f}" for c, p in result.scene))
        for name, share in sorted(result.shares().items(), key=lambda kv: -kv[1]):
            if share > 0:
                lines.append(f"{100 * share:6.1f} %  {name}")
    elif isinstance(result, AnswerResult):
        lines.append(f"Q: {result.question.text}")
        lines.append(f"A: {result.answer}")
        for ev in result.evidence[:5]:
            lines.append(f"{ev.rank:>4}  {ev.score:6.3f}  {ev.level:<7} {textwrap.shorten(ev.caption, width - 30)}")
    elif isinstance(result, SearchResult):
        lines.append(f"Search: {textwrap.shorten(result.query, width - 30)!r}  ({result.plan.n_tiles} DRIS tiles)")
        lines.append(f"{'rank':>4}  {'score':>6}  {'level':<7} {'gsd m':>6}  caption")
        for hit in result.hits:
            lines.append(f"{hit.rank:>4}  {hit.score:6.3f}  {hit.level:<7} {hit.gsd_m:6.2f}  {hit.caption}")
    else:
        lines.append(f"Describe: {result.plan.n_tiles} DRIS tiles, depth {result.plan.max_depth}")
        lines.append(f"{'level':<7} {'depth':>5} {'gsd m':>6} {'score':>6}  caption")
        shown = {"global": 1, "region": 4, "object": 8}
        for level, records in result.by_level().items():
            for rec in sorted(records, key=lambda r: -r.score)[:shown[level]]:
                caption = textwrap.shorten(rec.caption, width - 30)
                lines.append(f"{level:<7} {rec.depth:>5} {rec.gsd_m:6.2f} {rec.score:6.2f}  {caption}")
            if len(records) > shown[level]:
                lines.append(f"{'':<7} ... {len(records) - shown[level]} more {level} captions in the GeoPackage")
    return "\n".join(lines)


TEXT_ARGUMENT = {"search": "query", "classify": "classes", "ask": "question"}
"""The argument that holds each job's text (Describe has none)."""


def run(args: argparse.Namespace, progress: ProgressBackend):
    """Check the arguments, run one job and write its GeoPackage (atomically, under a lock)."""
    plan = check_args(args, ((args.raster, "raster file"),), (("--top-k", getattr(args, "top_k", None)),))
    if args.command == "search":
        check_query(args.query)
    elif args.command == "classify":
        split_classes(args.classes)  # a list that names no classes stops here, before the model loads
    elif args.command == "ask":
        parse_question(args.question)
    config = job_config(args, plan)
    extent = Extent(*args.extent) if args.extent else None
    with OutputLock(args.output):
        bundle = ModelBundle.load(model_dir(args), RuntimeOptions(args.device, args.threads))
        with open_raster(args.raster) as source:
            kind = "describe" if args.command == "caption" else args.command
            text = getattr(args, TEXT_ARGUMENT[kind]) if kind in TEXT_ARGUMENT else None
            result = run_job(kind, source, bundle, text, extent, config, progress)
        progress.set_stage("Writing the GeoPackage")
        write_geopackage(args.output, result_layers(result), result.crs_wkt, kinds=result_kinds(result),
                         finish=lambda _: check_canceled(progress))
    return result


def main(argv: list[str] | None = None, progress: ProgressBackend | None = None) -> int:
    """Entry point; returns the exit status.

    0 done; 1 a problem the user can fix (one sentence on stderr); 2 wrong arguments (argparse);
    70 an internal error (its traceback on stderr); 130 cancelled or interrupted (Ctrl-C).
    Nothing is written unless the job finished.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        progress: Where the job reports and whether it is cancelled (default: stderr, a bar on a
            terminal and a plain line per 10 % or 30 s elsewhere; nothing with ``--quiet`` or
            ``--json``, whose warnings go into the JSON; Ctrl-C cancels).
    """
    # GDAL prints its errors on stderr as well as returning them; the sentence quotes what matters, so
    # the user reads one line (CPL_LOG set by the user still wins).
    os.environ.setdefault("CPL_LOG", os.devnull)
    args = _parser().parse_args(argv)
    handler = next((m for m in (index_cli, batch_cli, models_cli) if args.command in m.COMMANDS), None)
    as_json = bool(getattr(args, "json", False))
    terminal = (TerminalProgress(quiet=args.quiet or as_json, collect_warnings=as_json)
                if progress is None else None)
    message = None
    try:
        result = (handler.run if handler else run)(args, progress or terminal)
    except CancelledError as exc:
        code, message = 130, one_line(str(exc))
    except KeyboardInterrupt:
        code, message = 130, INTERRUPTED
    except RsVlmError as exc:
        code, message = 1, one_line(f"Error: {exc}")
    except Exception:  # noqa: BLE001 - a bug: keep its traceback, say so in one line
        code, message = 70, traceback.format_exc() + INTERNAL_ERROR
    finally:
        if terminal is not None:
            terminal.close()  # before the message, so that it is the last line
    if message is not None:
        print(message, file=sys.stderr)
        return code
    if handler:
        if as_json and isinstance(result, dict) and terminal is not None and terminal.warnings:
            result.setdefault("warnings", []).extend(terminal.warnings)
        return handler.report(result, args.json) or 0
    warnings = list(dict.fromkeys([*(terminal.warnings if terminal is not None else []), *result.warnings]))
    if not args.json:
        for warning in result.warnings:
            print(one_line(f"Warning: {warning}"), file=sys.stderr)
    if args.json:
        summary = {"output": str(args.output), "tiles": result.plan.n_tiles, "timings": result.timings,
                   "warnings": warnings}
        if isinstance(result, ClassifyResult):
            summary["scene"] = result.scene
            summary["shares"] = {k: v for k, v in result.shares().items() if v > 0}
            summary["records"] = len(result.records)
        elif isinstance(result, AnswerResult):
            summary |= {"question": result.question.text, "kind": result.question.kind, "answer": result.answer,
                        "value": result.value, "evidence": len(result.evidence)}
        elif isinstance(result, SearchResult):
            summary["hits"] = [{"rank": h.rank, "score": h.score, "caption": h.caption} for h in result.hits]
        else:
            summary["global_caption"] = result.global_caption
            summary["records"] = len(result.records)
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(result))
        print(f"Wrote {args.output}")
    return 0
