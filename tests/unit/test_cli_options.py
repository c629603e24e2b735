"""The answer options of ``search`` and ``ask`` (--answers, --min-score, --max-boxes): parsed into the
JobConfig, and wrong values refused by argparse (exit 2) with a sentence, before any file is read."""

from __future__ import annotations

import pytest

from rs_vlm_plugin.core.cli import _parser, job_config, main
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.locate.boxes import ANSWERS, BoxConfig
from rs_vlm_plugin.core.planning.dris import PlanConfig

PLAN = PlanConfig(max_tiles=8)
JOBS = {"search": ("x.tif", "storage tanks"), "ask": ("x.tif", "where is the ship?")}


@pytest.mark.parametrize("command", list(JOBS))
@pytest.mark.parametrize(("options", "answers", "boxes"), [
    ((), "auto", BoxConfig()),
    (("--answers", "boxes"), "boxes", BoxConfig()),
    (("--answers", "outlines", "--min-score", "0.3"), "outlines", BoxConfig(min_score=0.3)),
    (("--min-score", "0", "--max-boxes", "7"), "auto", BoxConfig(min_score=0.0, max_boxes=7)),
    (("--min-score", "1", "--max-boxes", "1"), "auto", BoxConfig(min_score=1.0, max_boxes=1)),
])
def test_answer_options_reach_the_job_config(command, options, answers, boxes, tmp_path):
    args = _parser().parse_args([command, *JOBS[command], "-o", str(tmp_path / "o.gpkg"), *options])
    config = job_config(args, PLAN)
    assert (config.answers, config.boxes) == (answers, boxes)
    assert config.outlines is True and config.plan == PLAN  # the other options keep their defaults


def test_defaults_are_the_box_config_defaults_and_the_help_says_them(capsys):
    assert ANSWERS == ("auto", "boxes", "outlines")
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--answers {auto,boxes,outlines}" in text
    assert f"default {BoxConfig().min_score}" in text and f"default {BoxConfig().max_boxes}" in text


def test_commands_without_answers_keep_the_job_defaults(tmp_path):
    args = _parser().parse_args(["caption", "x.tif", "-o", str(tmp_path / "o.gpkg")])
    config = job_config(args, PLAN)
    assert (config.answers, config.boxes) == (JobConfig().answers, None)


@pytest.mark.parametrize(("command", "option", "value", "says"), [
    ("search", "--min-score", "1.5", "argument --min-score: The minimum box score must be between 0 and 1, not 1.5."),
    ("search", "--min-score", "-0.1", "must be between 0 and 1, not -0.1."),
    ("ask", "--min-score", "nan", "must be between 0 and 1, not nan."),
    ("search", "--min-score", "high", "argument --min-score: invalid float value: 'high'"),
    ("search", "--max-boxes", "0", "argument --max-boxes: The number of boxes to keep must be 1 or more, not 0."),
    ("ask", "--max-boxes", "-3", "The number of boxes to keep must be 1 or more, not -3."),
    ("search", "--max-boxes", "2.5", "argument --max-boxes: invalid int value: '2.5'"),
    ("search", "--answers", "box", "argument --answers: invalid choice: 'box' (choose from 'auto', 'boxes', "
                                   "'outlines')"),
    ("caption", "--answers", "boxes", "unrecognized arguments: --answers boxes"),
])
def test_wrong_answer_options_exit_2_with_a_sentence(command, option, value, says, tmp_path, capsys):
    raster = tmp_path / "missing.tif"  # never opened: argparse refuses first
    out = tmp_path / "never.gpkg"
    text = () if command == "caption" else ("tanks" if command == "search" else "where is the ship?",)
    with pytest.raises(SystemExit) as exit_:
        main([command, str(raster), *text, "-o", str(out), option, value, "-q"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]  # argparse's usage, then the error on one line
    assert last.startswith("python -m rs_vlm_plugin") and ": error: " in last and says in last, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())
