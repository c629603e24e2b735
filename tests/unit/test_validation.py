"""The job checks and the output lock of ``core/validation.py`` (no model needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.validation import (OutputLock, check_count, check_input_file, check_output, check_pixel_size,
                                           check_threads)


def test_the_lock_is_exclusive_and_removed_whatever_happens(tmp_path):
    out = tmp_path / "out.gpkg"
    with pytest.raises(ValueError):
        with OutputLock(out) as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
            with pytest.raises(RsVlmError, match="Another job is writing .* delete .*out.gpkg.lock"):
                with OutputLock(out):
                    pass
            assert lock.path.exists()  # the refused second writer leaves the first one's lock
            raise ValueError("the job failed")
    assert list(tmp_path.iterdir()) == []


def test_a_lock_of_a_finished_process_is_taken_over_one_of_another_host_is_not(tmp_path):
    out = tmp_path / "out.gpkg"
    lock = tmp_path / "out.gpkg.lock"
    child = subprocess.Popen(["true"])
    child.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": child.pid}))
    with OutputLock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({"host": "another-machine", "pid": child.pid}))
    with pytest.raises(RsVlmError, match="Another job is writing"):
        with OutputLock(out):
            pass
    assert json.loads(lock.read_text())["host"] == "another-machine"


@pytest.mark.parametrize("name,overwrite,message", [
    ("out.gpkg", False, None),
    ("OUT.GPKG", False, None),
    ("out.tif", False, "not a GeoPackage"),
    ("missing/out.gpkg", False, "does not exist; create it"),
    ("existing.gpkg", False, "already exists"),
    ("existing.gpkg", True, None),
    ("folder.gpkg", True, "is a folder"),
    ("link.gpkg", True, "is the input file"),
    ("hard.gpkg", True, "is the input file"),
])
def test_check_output(tmp_path, name, overwrite, message):
    source = tmp_path / "input.tif"
    source.write_bytes(b"pixels")
    (tmp_path / "existing.gpkg").write_bytes(b"old")
    (tmp_path / "folder.gpkg").mkdir()
    os.symlink(source, tmp_path / "link.gpkg")
    os.link(source, tmp_path / "hard.gpkg")
    if message is None:
        assert check_output(tmp_path / name, [source], overwrite) == tmp_path / name
    else:
        with pytest.raises(RsVlmError, match=message):
            check_output(tmp_path / name, [source], overwrite)


def test_inputs_and_numbers(tmp_path):
    with pytest.raises(RsVlmError, match="does not exist"):
        check_input_file(tmp_path / "none.tif")
    with pytest.raises(RsVlmError, match="is a folder"):
        check_input_file(tmp_path)
    assert check_input_file("/vsimem/x.tif").name == "x.tif"
    assert check_threads(0) == 0 and check_threads(os.cpu_count() or 1) == (os.cpu_count() or 1)
    for bad in (-1, (os.cpu_count() or 1) + 1):
        with pytest.raises(RsVlmError, match="threads must be 0"):
            check_threads(bad)
    assert check_count(None, "--top-k") is None and check_count(1, "--top-k") == 1
    with pytest.raises(RsVlmError, match="--top-k must be at least 1, not 0"):
        check_count(0, "--top-k")
    check_pixel_size(8, 8, "x")
    with pytest.raises(RsVlmError, match="7.5 x 100 pixels"):
        check_pixel_size(7.5, 100, "x")
