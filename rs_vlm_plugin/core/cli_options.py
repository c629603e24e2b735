"""Options shared by the commands of ``python -m rs_vlm_plugin`` and their checks (see :mod:`cli`,
:mod:`index_cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from .bundle import default_bundle_dir
from .locate.boxes import ANSWERS, BoxConfig
from .planning.dris import MAX_UNIFORM_TILES, PlanConfig
from .validation import JobCheck, check_job


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """-o/--output, --overwrite, --model, --device, --threads, --json, -q (every command)."""
    parser.add_argument("-o", "--output", type=Path, required=True, help="GeoPackage to write (.gpkg)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output when it exists")
    parser.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the bundled model)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: automatic)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary (with any warnings) instead of a table; stderr only for errors")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress and no messages on stderr, only warnings and errors")


def common_raster_parser() -> argparse.ArgumentParser:
    """The options of the commands that read a raster (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("raster", type=Path, help="raster file (GeoTIFF, VRT, JPEG, PNG, ...)")
    common.add_argument("--extent", type=float, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                        help="part of the raster, in the raster's CRS (default: all of it)")
    add_plan_options(common)
    add_run_options(common)
    return common


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    """--max-tiles, --max-pixels, --uniform, --max-uniform-tiles (every command that plans tiles)."""
    parser.add_argument("--max-tiles", type=int, default=PlanConfig().max_tiles, help="DRIS budget in tiles")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="DRIS budget in encoded pixels (tiles x tile size squared); the tighter budget wins")
    parser.add_argument("--uniform", action="store_true", help="uniform full-resolution grid instead of DRIS")
    parser.add_argument("--max-uniform-tiles", type=int, default=MAX_UNIFORM_TILES,
                        help="refuse a uniform grid of more tiles than this")
    parser.add_argument("--guide", default="", metavar="TEXT",
                        help="caption, index: plan text-guided, refined down to native resolution where TEXT scores "
                             "(default: by image complexity)")
    parser.add_argument("--no-guided", dest="guided", action="store_false",
                        help="search, ask: plan by image complexity instead of text-guided")
    parser.add_argument("--no-outlines", dest="outlines", action="store_false",
                        help="search, \"where is X?\": no outline layer beside the tile hits")


def plan_job_options(args: argparse.Namespace) -> dict:
    """The JobConfig fields of --guide, --no-guided and --no-outlines."""
    return {"guide_query": getattr(args, "guide", ""), "guided": None if getattr(args, "guided", True) else False,
            "outlines": getattr(args, "outlines", True)}


def add_answer_options(parser: argparse.ArgumentParser) -> None:
    """--answers, --min-score, --max-boxes (search, ask: how what is found is drawn)."""
    group = parser.add_argument_group("answers", "how search and \"where is X?\" draw what they find")
    group.add_argument("--answers", choices=ANSWERS, default="auto",
                       help="auto (default): one box per object when the query names an object (airplanes, "
                            "ships, storage tanks, vehicles, ...), relevance outlines when it names a region "
                            "(\"flooded fields\"); boxes, outlines: that kind whatever the query (a model "
                            "without a box head always outlines)")
    group.add_argument("--min-score", dest="min_box_score", type=_box_setting("min_score", float),
                       default=BoxConfig().min_score, metavar="S",
                       help="drop boxes scoring below S (heat x p(query), 0 to 1; default %(default)s)")
    group.add_argument("--max-boxes", type=_box_setting("max_boxes", int), default=BoxConfig().max_boxes,
                       metavar="N", help="keep at most N boxes, best first (default %(default)s)")


def answer_job_options(args: argparse.Namespace) -> dict:
    """The JobConfig fields of --answers, --min-score and --max-boxes (none for the commands without them)."""
    if not hasattr(args, "answers"):
        return {}
    return {"answers": args.answers, "boxes": BoxConfig(min_score=args.min_box_score, max_boxes=args.max_boxes)}


def _box_setting(name: str, parse: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type for the BoxConfig field ``name``: read by ``parse``, checked by BoxConfig itself,
    so that a wrong value is an argument error (exit 2) with BoxConfig's sentence."""
    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {parse.__name__} value: {text!r}") from None
        try:
            BoxConfig(**{name: value})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return convert


def model_dir(args: argparse.Namespace) -> Path:
    """The bundle folder of a command: --model, or the bundled model."""
    return args.model or default_bundle_dir()


def check_args(args: argparse.Namespace, inputs: tuple[tuple[Path, str], ...],
               counts: tuple[tuple[str, int | None], ...] = ()) -> PlanConfig | None:
    """Check a command's inputs, output and options before any work (see :func:`validation.check_job`).

    Returns:
        The plan settings of a raster command (None for commands that plan no tiles).

    Raises:
        RsVlmError: The first problem, as a sentence.
    """
    plan = None
    if hasattr(args, "max_tiles"):
        counts = (("--max-tiles", args.max_tiles), *counts)
        plan = {"max_tiles": args.max_tiles, "max_pixels": args.max_pixels, "uniform": args.uniform,
                "max_uniform_tiles": args.max_uniform_tiles}
    return check_job(JobCheck(inputs=inputs, output=args.output, model_dir=model_dir(args), overwrite=args.overwrite,
                              threads=args.threads, counts=counts, plan=plan))
