"""Cancellation at every stage of a job, through the core's progress object and through Ctrl-C.

The jobs are the real command line (``cli.main``) with a :class:`CancelAt` progress, which
cancels once a given stage has begun (and, optionally, after a number of progress updates in
it): the exit status is 130, the sentence says nothing was written, and no file is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from reliability_support import snapshot

from rs_vlm_plugin.core.cli import INTERRUPTED, main
from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.progress import RecordingProgress

ROOT = Path(__file__).resolve().parents[2]


class CancelAt(RecordingProgress):
    """A progress that asks to cancel once ``stage`` (a prefix) began and ``updates`` fractions followed."""

    def __init__(self, stage: str, updates: int = 0) -> None:
        super().__init__()
        self.stage = stage
        self.updates = updates
        self._seen: int | None = None  # fractions recorded when the stage began

    def set_stage(self, stage: str) -> None:  # noqa: D102
        super().set_stage(stage)
        if self._seen is None and stage.startswith(self.stage):
            self._seen = len(self.fractions)

    def is_canceled(self) -> bool:  # noqa: D102
        return self._seen is not None and len(self.fractions) - self._seen >= self.updates


@dataclass(frozen=True)
class Stage:
    """Where to cancel and what the job must not have reached."""

    argv: tuple[str, ...]
    stage: str
    updates: int
    never: str  # a stage that must not have begun


LARGE = ("caption", "{large}", "-o", "{out}", "--uniform")  # 21 tiles: two batches of the image tower
STAGES = {
    "plan": Stage(LARGE, "Reading an overview", 0, "Encoding"),
    "read": Stage(LARGE, "Encoding", 0, "Writing captions"),
    "encode": Stage(LARGE, "Encoding", 1, "Writing captions"),
    "decode": Stage(LARGE, "Writing captions", 0, "Writing the GeoPackage"),
    "write": Stage(LARGE, "Writing the GeoPackage", 0, "never"),
    "search_encode": Stage(("search", "{large}", "trees", "-o", "{out}", "--uniform"), "Encoding", 1, "Scoring"),
    "index_write": Stage(("index", "{large}", "-o", "{out}", "--max-tiles", "16"), "Writing the index", 0, "never"),
    "index_search_write": Stage(("search-index", "{index}", "trees", "-o", "{out}"), "Writing the GeoPackage", 0,
                                "never"),
}


@pytest.mark.parametrize("name", list(STAGES))
def test_cancel_at_each_stage_writes_nothing(name, hostile, index_file, bundle_dir, tmp_path, capsys):
    case = STAGES[name]
    out = tmp_path / "out.gpkg"
    fill = {"large": str(hostile["large"]), "index": str(index_file), "out": str(out)}
    progress = CancelAt(case.stage, case.updates)
    watched = [tmp_path, hostile["large"].parent, index_file.parent]
    before = snapshot(*watched)

    code = main([p.format(**fill) for p in case.argv] + ["--model", str(bundle_dir)], progress=progress)

    err = capsys.readouterr().err
    assert code == 130, err
    assert "cancelled; no output was written" in err and "Traceback" not in err
    assert snapshot(*watched) == before  # no output, no temporary file, no lock, inputs unchanged
    assert any(s.startswith(case.stage) for s in progress.stages)
    assert not any(s.startswith(case.never) for s in progress.stages), progress.stages
    if name == "read":
        assert max(progress.fractions, default=0.0) <= 0.05 + 1e-9  # not one batch read
    if name in ("encode", "search_encode"):
        assert 0.05 < max(progress.fractions) < 0.95  # one batch done, not all


def test_corrupt_tiles_fail_after_planning_with_a_sentence(hostile, bundle_dir):
    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.core.jobs.describe import describe
    from rs_vlm_plugin.core.raster import open_raster

    progress = RecordingProgress()
    with open_raster(hostile["damaged"]) as source, pytest.raises(RsVlmError, match="damaged or incomplete"):
        describe(source, ModelBundle.load(bundle_dir), None, JobConfig(), progress)
    assert progress.stages[-1].startswith("Encoding")  # the plan read the intact overviews; the tiles failed


def test_ctrl_c_exits_130_with_one_line(hostile, bundle_dir, tmp_path):
    out = tmp_path / "out.gpkg"
    child = subprocess.Popen(
        [sys.executable, "-m", "rs_vlm_plugin", "caption", str(hostile["large"]), "-o", str(out), "--max-tiles", "64",
         "--uniform", "--model", str(bundle_dir)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A test run started in the background inherits SIGINT ignored, and so would the child: give it
        # the default disposition, as an interactive shell does, so that Python turns it into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    deadline = time.monotonic() + 120
    while "Encoding" not in seen and time.monotonic() < deadline:  # the progress bar names the stage
        char = child.stderr.read(1)
        if not char:
            break
        seen += char
    assert "Encoding" in seen, seen
    child.send_signal(signal.SIGINT)
    rest = child.stderr.read()
    code = child.wait(timeout=60)
    lines = [line for line in (seen + rest).replace("\r", "\n").splitlines() if line.strip()]
    assert code == 130, seen + rest
    assert lines[-1] == INTERRUPTED
    assert "Traceback" not in seen + rest
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary file, no lock
