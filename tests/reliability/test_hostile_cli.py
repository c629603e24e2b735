"""Hostile inputs through the real command line, in process (``cli.main``), one table row each.

For every case: the exit code, the sentence on stderr (no traceback), no input or pre-existing
file changed (sha256 before and after), no new file but the output of a job that succeeded, and
a time limit (``limit_s``, SIGALRM). The cases that need a process of their own (a changed
environment, a kill, two writers, a server) are in ``test_hostile_processes.py``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import time

import pytest
from reliability_support import record_case, snapshot, time_limit
from osgeo import ogr

from rs_vlm_plugin.core.cli import main

LONG_QUERY = ("a road through a forest next to a river with houses " * 100)[:5000]
EMOJI_QUERY = "\U0001F332\U0001F6E3\U0001F3E0\U0001F30A"


def _write_lock(folder: Path, pid: int | str) -> None:
    (folder / "out.gpkg.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


SETUPS: dict[str, Callable[[Path, dict], None]] = {
    "existing": lambda d, p: (d / "out.gpkg").write_bytes(b"an older result, not to be lost"),
    "symlink_to_raster": lambda d, p: os.symlink(p["scene"], d / "out.gpkg"),
    "hardlink_to_raster": lambda d, p: os.link(p["scene"], d / "out.gpkg"),
    "hardlink_to_model": lambda d, p: os.link(Path(p["copy"]) / "manifest.json", d / "out.gpkg"),
    "copy_index_here": lambda d, p: (d / "own.gpkg").write_bytes(Path(p["index"]).read_bytes()),
    "live_lock_this_process": lambda d, p: _write_lock(d, os.getpid()),
    "live_lock_other_process": lambda d, p: _write_lock(d, 1),
    "garbage_lock": lambda d, p: (d / "out.gpkg.lock").write_text("{half a lock"),
    "stale_lock": lambda d, p: _write_lock(d, _dead_pid()),
    "out_folder": lambda d, p: (d / "out.gpkg").mkdir(),
    "read_only_folder": lambda d, p: (d / "ro").mkdir(mode=0o500),
    "unreadable_raster": lambda d, p: (d / "locked.tif").write_bytes(Path(p["scene"]).read_bytes())
    or os.chmod(d / "locked.tif", 0),
}


@dataclass(frozen=True)
class Case:
    """One hostile command line.

    Attributes:
        argv: The arguments; ``{name}`` is replaced by the path of that fixture file, ``{out}``
            by the case's output, ``{dir}`` by its folder.
        code: The exit status expected.
        says: A regular expression the stderr must match.
        setup: Key of :data:`SETUPS` preparing files in the case folder first.
        changes: Pre-existing files (names in the case folder) the case may change or remove.
        needs_non_root: Only meaningful where permissions apply (root reads and writes anything).
        limit_s: The time limit in seconds.
    """

    argv: tuple[str, ...]
    code: int
    says: str
    setup: str | None = None
    changes: tuple[str, ...] = ()
    needs_non_root: bool = False
    limit_s: float = 60.0


CAP = ("caption", "{scene}", "-o", "{out}", "--max-tiles", "4")
CASES: dict[str, Case] = {
    # Inputs.
    "missing_raster": Case(("caption", "{dir}/nope.tif", "-o", "{out}"), 1, r"raster file .*nope\.tif does not exist"),
    "raster_is_a_folder": Case(("caption", "{a_folder}", "-o", "{out}"), 1, r"is a folder; give the file itself"),
    "text_named_tif": Case(("caption", "{text}", "-o", "{out}"), 1, r"not a raster GDAL can read"),
    "empty_file": Case(("caption", "{empty}", "-o", "{out}"), 1, r"not a raster GDAL can read"),
    "truncated_geotiff": Case(("caption", "{truncated}", "-o", "{out}"), 1,
                              r"(damaged or incomplete|not a raster GDAL can read)"),
    "corrupt_tiles_mid_run": Case(("caption", "{damaged}", "-o", "{out}", "--max-tiles", "48"), 1,
                                  r"could not be read near pixel .*damaged or incomplete"),
    "all_nodata": Case(("caption", "{all_nodata}", "-o", "{out}"), 1, r"has no valid pixels"),
    "all_nan": Case(("search", "{all_nan}", "water", "-o", "{out}"), 1, r"has no valid pixels"),
    "tiny_raster": Case(("caption", "{tiny}", "-o", "{out}"), 1, r"5 x 5 pixels, smaller than 8 pixels on a side"),
    "three_pixel_strip": Case(("index", "{strip}", "-o", "{out}"), 1, r"3 x 600 pixels, smaller than 8"),
    "extent_misses": Case((*CAP, "--extent", "0", "0", "10", "10"), 1, r"does not overlap the raster"),
    "extent_two_pixels": Case((*CAP, "--extent", "500000", "4099999", "500001", "4100000"), 1,
                              r"2 x 2 pixels, smaller than 8"),
    "unreadable_raster": Case(("caption", "{dir}/locked.tif", "-o", "{out}"), 1, r"cannot be read",
                              setup="unreadable_raster", needs_non_root=True),
    # The output.
    "output_is_a_folder": Case(CAP, 1, r"is a folder; give a file name ending in \.gpkg", setup="out_folder"),
    "output_not_gpkg": Case(("caption", "{scene}", "-o", "{dir}/out.shp"), 1, r"not a GeoPackage"),
    "output_folder_missing": Case(("caption", "{scene}", "-o", "{dir}/no/such/out.gpkg"), 1,
                                  r"folder .* does not exist; create it"),
    "output_folder_read_only": Case(("caption", "{scene}", "-o", "{dir}/ro/out.gpkg"), 1, r"is not writable",
                                    setup="read_only_folder", needs_non_root=True),
    "output_exists": Case(CAP, 1, r"already exists; .*--overwrite", setup="existing"),
    "output_exists_overwrite": Case((*CAP, "--overwrite"), 0, r"^$", setup="existing", changes=("out.gpkg",)),
    "output_links_to_raster": Case((*CAP, "--overwrite"), 1, r"is the input file", setup="symlink_to_raster"),
    "output_hard_link_of_raster": Case((*CAP, "--overwrite"), 1, r"is the input file", setup="hardlink_to_raster"),
    "output_hard_link_of_model_file": Case((*CAP, "--overwrite", "--model", "{copy}"), 1, r"is the input file .*manifest",
                                           setup="hardlink_to_model"),
    "output_is_the_index": Case(("search-index", "{dir}/own.gpkg", "trees", "-o", "{dir}/own.gpkg", "--overwrite"), 1,
                                r"is the input file", setup="copy_index_here"),
    "lock_of_this_process": Case(CAP, 1, r"Another job is writing .*delete .*\.lock", setup="live_lock_this_process"),
    "lock_of_a_live_process": Case(CAP, 1, r"Another job is writing", setup="live_lock_other_process"),
    "unreadable_lock": Case(CAP, 1, r"Another job is writing", setup="garbage_lock"),
    "stale_lock_taken_over": Case(CAP, 0, r"^$", setup="stale_lock", changes=("out.gpkg.lock",)),
    # Options.
    "top_k_negative": Case(("search", "{scene}", "trees", "-o", "{out}", "--top-k", "-1"), 1, r"--top-k must be at least 1"),
    "top_k_zero": Case(("search", "{scene}", "trees", "-o", "{out}", "--top-k", "0"), 1, r"--top-k must be at least 1"),
    "max_tiles_zero": Case(("caption", "{scene}", "-o", "{out}", "--max-tiles", "0"), 1, r"--max-tiles must be at least 1"),
    "max_pixels_one": Case((*CAP, "--max-pixels", "1"), 1, r"less than one tile \(224 x 224"),
    "threads_negative": Case((*CAP, "--threads", "-3"), 1, r"threads must be 0 \(automatic\) or between 1 and"),
    "threads_huge": Case((*CAP, "--threads", "100000"), 1, r"not 100000"),
    "max_hits_zero": Case(("search-index", "{index}", "trees", "-o", "{out}", "--max-hits", "0"), 1,
                          r"--max-hits must be at least 1"),
    "uniform_limit_zero": Case((*CAP, "--uniform", "--max-uniform-tiles", "0"), 1, r"tile limit must be at least 1"),
    "uniform_over_the_limit": Case(("caption", "{damaged}", "-o", "{out}", "--uniform", "--max-uniform-tiles", "63"),
                                   1, r"would have 64 tiles, more than the limit of 63; .*--max-uniform-tiles 64"),
    "top_k_not_a_number": Case(("search", "{scene}", "trees", "-o", "{out}", "--top-k", "many"), 2, r"invalid int value"),
    "min_box_score_above_one": Case(("search", "{scene}", "trees", "-o", "{out}", "--min-score", "1.5"), 2,
                                    r"--min-score: The minimum box score must be between 0 and 1, not 1\.5\."),
    "max_boxes_zero": Case(("ask", "{scene}", "where is the ship?", "-o", "{out}", "--max-boxes", "0"), 2,
                           r"--max-boxes: The number of boxes to keep must be 1 or more"),
    "answers_unknown": Case(("search", "{scene}", "trees", "-o", "{out}", "--answers", "polygons"), 2,
                            r"--answers: invalid choice: 'polygons'"),
    "classes_only_commas": Case(("classify", "{scene}", ",,,", "-o", "{out}"), 1, r"names no classes"),
    "one_class": Case(("classify", "{scene}", "forest", "-o", "{out}"), 1, r"at least two classes"),
    "blank_query": Case(("search", "{scene}", "   ", "-o", "{out}"), 1, r"search text is empty"),
    "question_not_understood": Case(("ask", "{scene}", "tell me a story", "-o", "{out}"), 1, r"I do not understand"),
    "query_5000_characters": Case(("search", "{scene}", LONG_QUERY, "-o", "{out}", "--max-tiles", "4"), 0,
                                  r"Warning: The search text is too long .*5,000 characters"),
    "query_all_emoji": Case(("search", "{scene}", EMOJI_QUERY, "-o", "{out}", "--max-tiles", "4"), 0,
                            r"Warning: The search text has no word the model knows"),
    "question_subject_all_emoji": Case(("ask", "{scene}", f"is there {EMOJI_QUERY}?", "-o", "{out}", "--max-tiles", "4"),
                                       0, r"Warning: The subject of the question .*has no word the model knows"),
    "class_names_all_emoji": Case(("classify", "{scene}", "\U0001F332, \U0001F3E0", "-o", "{out}", "--max-tiles", "4"), 0,
                                  r"Warning: The class name .*no word.*\nWarning: The class name .*no word"),
    "index_query_all_emoji": Case(("search-index", "{index}", EMOJI_QUERY, "-o", "{out}"), 0,
                                  r"Warning: The search text has no word the model knows"),
    # Models.
    "model_folder_missing": Case((*CAP, "--model", "{dir}/no_model"), 1, r"No model bundle at"),
    "model_image_tower_cut_short": Case((*CAP, "--model", "{truncated_image}"), 1,
                                        r"model file .*image_encoder\.onnx is damaged or incomplete.*export the model again"),
    "model_text_tower_garbage": Case(("search", "{scene}", "trees", "-o", "{out}", "--model", "{garbage_text}"), 1,
                                     r"model file .*text_encoder\.onnx is damaged or incomplete"),
    "model_manifest_not_json": Case((*CAP, "--model", "{bad_manifest}"), 1, r"manifest .* is not valid JSON"),
    "index_of_another_model": Case(("search-index", "{index}", "trees", "-o", "{out}", "--model", "{reexported}"), 1,
                                   r"exported again"),
    # Indexes.
    "index_missing": Case(("search-index", "{dir}/none.gpkg", "trees", "-o", "{out}"), 1, r"index file .* does not exist"),
    "index_is_a_raster": Case(("search-index", "{scene}", "trees", "-o", "{out}"), 1, r"is not an RS-VLM embedding index"),
    "index_cut_short": Case(("search-index", "{index_cut}", "trees", "-o", "{out}"), 1,
                            r"(damaged or incomplete|incomplete|not an RS-VLM embedding index)"),
    "index_bad_blob": Case(("search-index", "{index_bad_blob}", "trees", "-o", "{out}"), 1, r"damaged or incomplete"),
    "index_short_column": Case(("search-index", "{index_short_column}", "trees", "-o", "{out}"), 1,
                               r"damaged or incomplete .*column depth"),
    "index_without_embeddings": Case(("search-index", "{index_no_embeddings}", "trees", "-o", "{out}"), 1,
                                     r"damaged or incomplete"),
    "index_without_metadata": Case(("search-index", "{index_no_meta}", "trees", "-o", "{out}"), 1,
                                   r"is not an RS-VLM embedding index"),
    "index_metadata_not_json": Case(("search-index", "{index_bad_meta}", "trees", "-o", "{out}"), 1,
                                    r"is not an RS-VLM embedding index"),
    # Baselines: the same machinery passes good jobs.
    "good_caption": Case(CAP, 0, r"^$"),
    "good_index_search": Case(("search-index", "{index}", "a road", "-o", "{out}", "--max-hits", "3"), 0, r"^$"),
    "half_nodata_caption": Case(("caption", "{half_nodata}", "-o", "{out}", "--max-tiles", "4"), 0, r"^$"),
}


@pytest.fixture()
def paths(hostile, broken_models, index_file, broken_indexes, bundle_dir) -> dict[str, Path]:
    return {**hostile, **broken_models, **broken_indexes, "index": index_file, "model": bundle_dir}


def _layers(path: Path) -> dict[str, int]:
    ds = ogr.Open(str(path))
    try:
        return {ds.GetLayer(i).GetName(): ds.GetLayer(i).GetFeatureCount() for i in range(ds.GetLayerCount())}
    finally:
        ds = None


def run_cli(argv: list[str]) -> int:
    """``cli.main`` as the shell would run it: argparse's SystemExit becomes the exit status."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(name, paths, tmp_path, capsys, request):
    case = CASES[name]
    row = record_case(request, "in-process", name, case.argv, case.code, case.says, case.limit_s)
    if case.needs_non_root and os.geteuid() == 0:
        pytest.skip("root reads and writes files whatever their permissions")
    folder = tmp_path / "case"
    folder.mkdir()
    if case.setup:
        SETUPS[case.setup](folder, paths)
    fill = {k: str(v) for k, v in paths.items()} | {"out": str(folder / "out.gpkg"), "dir": str(folder)}
    argv = [part.format(**fill) for part in case.argv]
    if "--model" not in argv:
        argv += ["--model", fill["model"]]
    argv.append("-q")
    watched = sorted({Path(v).parent for v in paths.values()} | {folder})
    before = snapshot(*watched)

    start = time.monotonic()
    with time_limit(case.limit_s):
        code = run_cli(argv)
    row["got"], row["seconds"] = code, time.monotonic() - start

    err = capsys.readouterr().err
    after = snapshot(*watched)
    if (folder / "ro").exists():
        os.chmod(folder / "ro", 0o700)
    assert code == case.code, err
    assert "Traceback" not in err
    if case.code == 1:
        assert err.startswith("Error: ") and err.count("\n") == 1, err  # one sentence, one line
    assert re.search(case.says, err, re.S), err
    changed = [p for p in before if p.name not in case.changes and after.get(p) != before[p]]
    assert not changed, f"changed or removed: {changed}"
    new = sorted(set(after) - set(before))
    output = folder / "out.gpkg"
    assert new == ([output] if code == 0 and output not in before else []), f"left behind: {new}"
    if code == 0:
        assert sum(_layers(output).values()) >= 1
        assert not (folder / "out.gpkg.lock").exists()


def test_the_tables_hold_at_least_90_cases():
    from test_hostile_processes import PROCESS_CASES

    assert len(CASES) + len(PROCESS_CASES) >= 90
    assert not set(CASES) & set(PROCESS_CASES)  # one name, one case


def test_half_nodata_skips_the_tiles_that_show_nothing(paths, tmp_path, capsys):
    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.core.jobs.describe import describe
    from rs_vlm_plugin.core.planning.dris import PlanConfig
    from rs_vlm_plugin.core.progress import RecordingProgress
    from rs_vlm_plugin.core.raster import open_raster

    progress = RecordingProgress()
    with open_raster(paths["half_nodata"]) as source:
        result = describe(source, ModelBundle.load(paths["model"]), None, JobConfig(plan=PlanConfig(max_tiles=4)),
                          progress)
        west = source.georef.extent.xmin + 128 * source.georef.pixel_width
        assert any("have no valid pixels" in m for m in progress.messages)
        regions = result.by_level()["region"]
        assert len(regions) == 2 and all(r.extent.xmin >= west - 1e-6 for r in regions)
        for record in result.records:
            assert source.read_masked(record.extent, 32, 32)[1].any()
