"""Batch captioning on a Dask cluster this project did not start (:mod:`external`): a scheduler and
workers as their own processes, in another folder, without PYTHONPATH, with the core from its wheel.

A batch of 20 generated rasters gives the single-process output feature for feature with a worker
killed (-9) mid-run; a client killed (-9) mid-run resumes on the rerun; a scheduler killed mid-run
is one sentence within 60 s; a corrupt raster among good ones is exit 3 and named; a worker
without the core, without the model or without the rasters is one sentence before any task.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, _make_geotiffs, gpkg_rows
from external import ExternalCluster, clean_env, node_env

from rs_vlm_plugin import __version__
from rs_vlm_plugin.core.distributed.manifest import MANIFEST_SUFFIX
from rs_vlm_plugin.core.distributed.preflight import check_cluster, wheel_name
from rs_vlm_plugin.core.distributed.probe import check_worker, core_digest
from rs_vlm_plugin.core.distributed.worker_cache import ModelRef
from rs_vlm_plugin.core.errors import RsVlmError

pytest.importorskip("dask.distributed")

MAX_TILES = 2
N_RASTERS = 20
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The core's wheel, built by ``build.py wheel``."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(ROOT / "build.py"), "wheel", "--dist", str(dist)], check=True,
                   capture_output=True, timeout=120)
    return dist / wheel_name(__version__)


@pytest.fixture(scope="module")
def node_python(wheel, tmp_path_factory) -> Path:
    """A node's Python: the dependencies, and the core only from the wheel."""
    return node_env(tmp_path_factory.mktemp("node") / "venv", wheel)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A node's Python with the dependencies but without the core."""
    return node_env(tmp_path_factory.mktemp("bare") / "venv", None)


@pytest.fixture(scope="module")
def cluster(node_python, tmp_path_factory):
    """A scheduler and two workers (preloaded), each its own process."""
    started = ExternalCluster(tmp_path_factory.mktemp("cluster"), node_python)
    try:
        started.ensure_workers(2)
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def rasters(tmp_path_factory) -> list[Path]:
    """20 different seeded 384 x 384 scenes, side by side in EPSG:26914."""
    module = _make_geotiffs()
    folder = tmp_path_factory.mktemp("twenty")
    paths = []
    for k in range(N_RASTERS):
        rng = np.random.default_rng(100 + k)
        paths.append(module._write(folder / f"r{k:02d}.tif", module.scene_array(rng, 384), module.CRS.from_epsg(26914),
                                   module.from_origin(module.UTM_ORIGIN[0] + 200 * k, module.UTM_ORIGIN[1],
                                                      module.PIXEL_M, module.PIXEL_M)))
    return paths


@pytest.fixture(scope="module")
def serial(rasters, tmp_path_factory) -> dict:
    """The single-process run of the 20 rasters (the same command without --dask): its summary."""
    out = tmp_path_factory.mktemp("reference") / "serial.gpkg"
    done = batch(rasters[0].parent, out)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def reference(serial) -> list[tuple[dict, bytes]]:
    """The single-process output: every feature's attributes and geometry."""
    return gpkg_rows(Path(serial["output"]), "captions")


def batch_argv(inputs, out: Path, address: str | None, *more: str) -> list[str]:
    argv = [sys.executable, "-m", "rs_vlm_plugin", "batch", *(str(p) for p in (inputs if isinstance(inputs, list)
                                                                              else [inputs])),
            "-o", str(out), "--max-tiles", str(MAX_TILES), "-q", "--json", *more]
    return argv + (["--dask", address] if address else [])


def batch(inputs, out: Path, address: str | None = None) -> subprocess.CompletedProcess:
    """Run the command line (the client) to its end."""
    return subprocess.run(batch_argv(inputs, out, address), cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)


def start_batch(inputs, out: Path, address: str) -> subprocess.Popen:
    """Start the command line (the client) as its own process."""
    return subprocess.Popen(batch_argv(inputs, out, address), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished_rasters(out: Path) -> int:
    """Rasters the client has finished so far (its manifest)."""
    try:
        return len(json.loads(out.with_name(out.name + MANIFEST_SUFFIX).read_text())["done"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_until_finished(out: Path, n: int, client: subprocess.Popen, timeout_s: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while finished_rasters(out) < n:
        assert client.poll() is None, client.communicate()
        assert time.monotonic() < deadline, f"fewer than {n} rasters finished in {timeout_s} s"
        time.sleep(0.1)


def opens_cleanly(path: Path) -> bool:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_wheel_holds_the_core_and_installs_on_a_node(wheel, node_python, bare_python):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"rs_vlm_core-{__version__}.dist-info/METADATA").decode()
    core = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rs_vlm_plugin" / "core").rglob("*.py")
            if "__pycache__" not in p.parts}
    assert core <= names and "rs_vlm_plugin/__init__.py" in names
    assert not [n for n in names if n.startswith(("rs_vlm_plugin/qgis_shell", "rs_vlm_plugin/modeling",
                                                  "rs_vlm_plugin/models/", "rs_vlm_train"))]
    assert "Requires-Dist: onnxruntime==" in meta and "Requires-Dist: dask[distributed]==" in meta
    where = subprocess.run([str(node_python), "-c", "import rs_vlm_plugin.core.distributed.tasks as t, rs_vlm_plugin "
                            "as p; print(p.__file__)"], capture_output=True, text=True, cwd=node_python.parents[1],
                           env=clean_env(), timeout=120)
    assert where.returncode == 0, where.stderr
    installed = Path(where.stdout.strip()).parent
    assert installed.is_relative_to(node_python.parents[1]) and core_digest(installed) == core_digest(ROOT / "rs_vlm_plugin")
    rebuilt = subprocess.run([sys.executable, str(ROOT / "build.py"), "wheel", "--dist", str(wheel.parent / "again")],
                             capture_output=True, timeout=120)
    assert rebuilt.returncode == 0 and (wheel.parent / "again" / wheel.name).read_bytes() == wheel.read_bytes()


def test_a_worker_without_the_core_is_one_sentence_before_any_raster(node_python, bare_python, rasters, tmp_path):
    folder = tmp_path / "cluster"
    folder.mkdir()
    cluster = ExternalCluster(folder, node_python)
    try:
        cluster.add_worker(bare_python, preload=False)
        out = tmp_path / "out" / "never.gpkg"
        out.parent.mkdir()
        done = batch(rasters[:3], out, cluster.address)
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: The Dask worker tcp://127.0.0.1:") and \
            "cannot import RS-VLM's core (ModuleNotFoundError: No module named 'rs_vlm_plugin')" in last
        assert f"pip install {wheel_name(__version__)}" in last and "Failed:" not in done.stderr
        assert list(out.parent.iterdir()) == []
        assert not {"plan_raster", "encode_chunk"} & cluster.task_prefixes()  # nothing was submitted
    finally:
        cluster.close()


def test_a_worker_without_the_model_or_the_rasters_is_named(cluster, bundle_dir, rasters, tmp_path):
    from dask.distributed import Client

    missing = tmp_path / "not_there.tif"
    found = check_worker(core_digest(ROOT / "rs_vlm_plugin"), dataclasses.asdict(ModelRef(str(tmp_path), "0" * 64)),
                         [str(rasters[0]), str(missing), "/vsicurl/http://127.0.0.1:9/x.tif"])
    assert found["unreadable"] == [str(missing)] and "has no copy of the model" in found["model_error"]
    with Client(cluster.address, timeout="20s", set_as_default=False) as client:
        with pytest.raises(RsVlmError, match=r"^The Dask worker tcp://\S+ \(host .*\) cannot load the model "
                                             r"rs-vlm-lite0 with SHA-256 fingerprint 000000000000\.\.\. .*shared storage"):
            check_cluster(client, ModelRef(str(bundle_dir), "0" * 64), [str(rasters[0])], cluster.address)


def test_rasters_the_workers_cannot_see_are_one_sentence(node_python, rasters, tmp_path):
    """A worker in its own mount namespace, where the client's raster folder is an empty tmpfs."""
    hidden = tmp_path / "local_disk"
    hidden.mkdir()
    for path in rasters[:2]:
        shutil.copy(path, hidden / path.name)
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs none {hidden} && ls {hidden}"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0 or probe.stdout.strip():
        pytest.skip("needs `unshare --mount` (root) to hide a folder from a worker")
    folder = tmp_path / "cluster"
    folder.mkdir()
    cluster = ExternalCluster(folder, node_python)
    try:
        argv = ["unshare", "--mount", "sh", "-c", f"mount -t tmpfs none {hidden} && exec \"$0\" \"$@\"",
                str(node_python), "-m", "dask", "worker", "--scheduler-file", str(cluster.scheduler_file),
                "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--death-timeout", "30"]
        with open(folder / "worker0.log", "ab") as log:
            cluster.workers.append(subprocess.Popen(argv, cwd=folder, env=clean_env(), stdout=log,
                                                    stderr=subprocess.STDOUT))
        cluster.wait_for_workers(1)
        done = batch(sorted(hidden.iterdir()), tmp_path / "never.gpkg", cluster.address)
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: The Dask worker") and f"cannot read {hidden / rasters[0].name} and 1 more" in last
        assert "same path" in last and "/vsicurl/" in last
    finally:
        cluster.close()


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster, rasters, reference, tmp_path):
    cluster.ensure_workers(2)
    out = tmp_path / "killed.gpkg"
    client = start_batch(rasters[0].parent, out, cluster.address)
    wait_until_finished(out, 2, client)
    victim = cluster.alive()[0]
    os.kill(victim.pid, signal.SIGKILL)
    stdout, stderr = client.communicate(timeout=RUN_TIMEOUT_S)
    assert client.returncode == 0, stderr
    assert victim.wait(timeout=10) == -signal.SIGKILL and finished_rasters(out) == 0  # manifest gone once written
    summary = json.loads(stdout)
    assert summary["done"] == N_RASTERS and summary["failed"] == {} and summary["workers"] == 2
    rows = gpkg_rows(out, "captions")
    assert len(set((tuple(sorted(a.items())), w) for a, w in rows)) == len(rows)  # no duplicate feature
    assert rows == reference  # every raster once, as the single process wrote it
    assert opens_cleanly(out)


def test_a_client_killed_mid_run_resumes_on_the_rerun(cluster, rasters, serial, reference, tmp_path):
    cluster.ensure_workers(2)
    out = tmp_path / "resumed.gpkg"
    client = start_batch(rasters[0].parent, out, cluster.address)
    wait_until_finished(out, 3, client)
    os.kill(client.pid, signal.SIGKILL)
    client.communicate(timeout=30)
    kept = finished_rasters(out)
    assert 3 <= kept < N_RASTERS and not out.exists()
    done = batch(rasters[0].parent, out, cluster.address)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed"] >= kept and summary["done"] == N_RASTERS
    assert summary["tiles_encoded"] < serial["tiles_encoded"]  # the finished rasters were not encoded again
    assert gpkg_rows(out, "captions") == reference and opens_cleanly(out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no manifest, parts or stale lock left


def test_a_corrupt_raster_among_good_ones_is_named_and_exit_3(cluster, rasters, reference, archive, tmp_path):
    cluster.ensure_workers(2)
    out = tmp_path / "partly.gpkg"
    done = batch([rasters[0], archive["broken"], rasters[1], rasters[2]], out, cluster.address)
    assert done.returncode == 3, done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("Failed: ")]
    assert len(failed) == 1 and failed[0].startswith("Failed: broken: ") and "is not a raster GDAL can read" in failed[0]
    assert gpkg_rows(out, "captions") == [r for r in reference if r[0]["source"] in ("r00", "r01", "r02")]


def test_a_scheduler_killed_mid_run_is_a_sentence_within_60_s(node_python, rasters, tmp_path):
    folder = tmp_path / "cluster"
    folder.mkdir()
    cluster = ExternalCluster(folder, node_python)
    try:
        cluster.ensure_workers(2)
        out = tmp_path / "out" / "lost.gpkg"
        out.parent.mkdir()
        client = start_batch(rasters[0].parent, out, cluster.address)
        wait_until_finished(out, 1, client)
        os.kill(cluster.scheduler.pid, signal.SIGKILL)
        killed = time.monotonic()
        try:
            _, stderr = client.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            client.kill()
            pytest.fail("the client still waits 60 s after the scheduler died")
        seconds = time.monotonic() - killed
        assert client.returncode == 1, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: The Dask scheduler at {cluster.address} stopped answering mid-run;"), stderr
        assert finished_rasters(out) >= 1 and not out.exists()  # the finished rasters are kept for a rerun
        print(f"scheduler killed: the client stopped {seconds:.1f} s later")
    finally:
        cluster.close()
