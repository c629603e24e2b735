"""Two jobs writing one output at once: the second is refused with a sentence while the first
holds the lock, and the first finishes with its output intact and the lock removed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from osgeo import ogr

from rs_vlm_plugin.core.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_writer_of_the_same_output_is_refused(hostile, bundle_dir, tmp_path, capsys):
    out = tmp_path / "out.gpkg"
    lock = tmp_path / "out.gpkg.lock"
    first = subprocess.Popen([sys.executable, "-m", "rs_vlm_plugin", "caption", str(hostile["large"]), "-o", str(out),
                              "--uniform", "-q", "--model", str(bundle_dir)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lock.exists(), "the first job never took the lock"

    code = main(["search", str(hostile["scene"]), "trees", "-o", str(out), "--overwrite", "-q",
                 "--model", str(bundle_dir)])

    err = capsys.readouterr().err
    assert code == 1 and "Another job is writing" in err and str(lock) in err
    assert first.wait(timeout=300) == 0, first.stderr.read()
    ds = ogr.Open(str(out))
    assert ds.GetLayerByName("captions_global").GetFeatureCount() == 1  # the first job's output, whole
    ds = None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gpkg"]  # no lock, no temporary file
