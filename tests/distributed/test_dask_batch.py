"""Batch captioning and index building on a real Dask LocalCluster of 2 worker processes: the
output equals the single-process output feature for feature (attributes and geometry WKB), a
worker killed mid-run loses and duplicates nothing, an interrupted run resumes, a broken raster
is reported by name while the others go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, gpkg_rows

from rs_vlm_plugin.core.cli import main
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.gpkg import write_geopackage
from rs_vlm_plugin.core.jobs.index import EmbeddingIndex, build_index
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.describe import describe
from rs_vlm_plugin.core.progress import RecordingProgress
from rs_vlm_plugin.core.raster import open_raster
from rs_vlm_plugin.core.records import CaptionRecord
from rs_vlm_plugin.core.distributed.cluster import DASK_MISSING, DaskAddress, parse_address
from rs_vlm_plugin.core.distributed.manifest import MANIFEST_SUFFIX, PARTS_SUFFIX
from rs_vlm_plugin.core.distributed.tasks import chunk_ranges

MAX_TILES = 8
GOOD = ("scene", "gradient", "uint16_nodata")


@pytest.fixture(scope="module")
def reference(archive, bundle, tmp_path_factory):
    """The single-process captions of each good raster (pipeline.describe), and a writer of the
    merged layer of any of them in input order."""
    config = JobConfig(plan=PlanConfig(max_tiles=MAX_TILES))
    records = {}
    for key in GOOD:
        with open_raster(archive[key]) as source:
            result = describe(source, bundle, None, config)
        records[key] = (result.records, result.crs_wkt)
    folder = tmp_path_factory.mktemp("reference")

    def merged(keys, name="reference.gpkg", sources=None) -> Path:
        rows = [replace(r, source=(sources or {}).get(k, r.source)) for k in keys for r in records[k][0]]
        return write_geopackage(folder / name, {"captions": rows}, records[keys[0]][1],
                                kinds={"captions": CaptionRecord})

    return merged


def run_cli(argv, progress=None) -> int:
    return main([*argv, "-q", "--max-tiles", str(MAX_TILES)], progress=progress)


def leftovers(output: Path) -> list[Path]:
    return [p for p in output.parent.iterdir() if p.name != output.name]


def test_parse_address():
    assert parse_address("tcp://10.0.0.5:8786") == DaskAddress(scheduler="tcp://10.0.0.5:8786")
    assert parse_address("scheduler:8786") == DaskAddress(scheduler="tcp://scheduler:8786")
    assert parse_address("local:3") == DaskAddress(local_workers=3)
    for bad in ("", "local:0", "http//x", "scheduler"):
        with pytest.raises(RsVlmError, match="scheduler address|local cluster needs"):
            parse_address(bad)


def test_chunks_are_whole_batches_covering_every_tile_once():
    for n, size in ((1, 256), (37, 32), (300, 100), (64, 1)):
        for captions, align in ((True, 32), (False, 16)):
            ranges = chunk_ranges(n, size, 16, captions)
            assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
            assert all(a % align == 0 for a, _ in ranges)
    assert len(chunk_ranges(100, 16, 16, False)) == 7


def test_cluster_batch_equals_single_process(archive, reference, dask_client, tmp_path):
    out = tmp_path / "cluster.gpkg"
    code = run_cli(["batch", *(str(archive[k]) for k in GOOD), "-o", str(out), "--dask", dask_client.scheduler.address])
    assert code == 0
    expected = gpkg_rows(reference(list(GOOD)), "captions")
    got = gpkg_rows(out, "captions")
    assert len(got) == len(expected) > 3 * 5
    for (attrs, wkb), (want_attrs, want_wkb) in zip(got, expected):
        assert attrs == want_attrs and wkb == want_wkb
    assert {a["source"] for a, _ in got} == set(GOOD)
    assert leftovers(out) == []  # no manifest, parts, lock or temporary file


def test_index_of_a_strip_in_chunks_equals_build_index(archive, bundle, dask_client, tmp_path):
    """A 3-root strip cut into chunks of 16 tiles: the cluster's index is build_index's, bit for bit."""
    config = JobConfig(plan=PlanConfig(max_tiles=40))
    with open_raster(archive["strip"]) as source:
        single = build_index(source, bundle, tmp_path / "single.gpkg", config=config)
    out = tmp_path / "cluster.gpkg"
    code = main(["index", str(archive["strip"]), "-o", str(out), "-q", "--max-tiles", "40", "--chunk-tiles", "16",
                 "--dask", dask_client.scheduler.address])
    assert code == 0
    a, b = EmbeddingIndex.open(single), EmbeddingIndex.open(out)
    assert len({str(k).split(".")[0] for k in a.keys}) == 3 and len(a) > 32  # several roots, several chunks
    assert gpkg_rows(out, "index_tiles") == gpkg_rows(single, "index_tiles")
    for name in ("tokens", "extents", "depths", "levels", "gsd_m", "complexity", "keys"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    timing = {"created", "build_s", "encode_timings"}
    assert {k: v for k, v in a.meta.items() if k not in timing} == {k: v for k, v in b.meta.items() if k not in timing}
    hits_a = a.search(bundle, "buildings with shadows", 5)
    hits_b = b.search(bundle, "buildings with shadows", 5)
    assert [(h.score, h.extent, h.source) for h in hits_a.hits] == [(h.score, h.extent, h.source) for h in hits_b.hits]


def test_one_index_of_several_rasters(archive, bundle, dask_client, tmp_path):
    out = tmp_path / "all.gpkg"
    code = run_cli(["index", str(archive["scene"]), str(archive["gradient"]), "-o", str(out),
                    "--dask", dask_client.scheduler.address])
    assert code == 0
    index = EmbeddingIndex.open(out)
    assert [s["name"] for s in index.meta["sources"]] == ["scene", "gradient"]
    config = JobConfig(plan=PlanConfig(max_tiles=MAX_TILES))
    singles = []
    for key in ("scene", "gradient"):
        with open_raster(archive[key]) as source:
            singles.append(EmbeddingIndex.open(build_index(source, bundle, tmp_path / f"{key}.gpkg", config=config)))
    assert np.array_equal(index.tokens, np.concatenate([s.tokens for s in singles]))
    assert np.array_equal(index.sources, np.repeat([0, 1], [len(s) for s in singles]))
    hits = index.search(bundle, "a smooth green field", 50).hits
    assert {h.source for h in hits} == {"scene", "gradient"}


class KillOneWorker(RecordingProgress):
    """Kills (SIGKILL) a worker process that is running a task, once the first result is in."""

    def __init__(self, client) -> None:
        super().__init__()
        self.client = client
        self.killed: int | None = None

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        super().set_fraction(fraction)
        if self.killed is None and fraction > 0:
            busy = [addr for addr, keys in self.client.processing().items() if keys]
            if busy:
                pids = self.client.run(os.getpid, workers=[busy[0]])
                self.killed = pids[busy[0]]
                os.kill(self.killed, signal.SIGKILL)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(archive, reference, dask_client, tmp_path):
    folder = tmp_path / "copies"
    folder.mkdir()
    names = [f"scene_{k}" for k in range(4)]
    for name in names:
        os.link(archive["scene"], folder / f"{name}.tif")
    before = set(dask_client.run(os.getpid).values())
    progress = KillOneWorker(dask_client)
    out = tmp_path / "killed.gpkg"
    assert run_cli(["batch", str(folder), "-o", str(out), "--dask", dask_client.scheduler.address,
                    "--chunk-tiles", "1"], progress=progress) == 0
    assert progress.killed in before
    dask_client.wait_for_workers(2, timeout=60)
    assert progress.killed not in set(dask_client.run(os.getpid).values())  # it really died (the nanny made a new one)
    expected = reference(["scene"] * 4, "four.gpkg", None)
    want = [(dict(a, source=names[k // (len(gpkg_rows(expected, 'captions')) // 4)]), w)
            for k, (a, w) in enumerate(gpkg_rows(expected, "captions"))]
    assert gpkg_rows(out, "captions") == want


class CancelAfterOne(RecordingProgress):
    """Presses Cancel once the first raster is finished (its part written)."""

    def __init__(self, output: Path) -> None:
        super().__init__()
        self.manifest = output.with_name(output.name + MANIFEST_SUFFIX)

    def is_canceled(self) -> bool:  # noqa: D102
        return self.manifest.exists()


def test_an_interrupted_run_resumes_and_finishes_the_rest(archive, reference, dask_client, tmp_path):
    out = tmp_path / "resumed.gpkg"
    argv = ["batch", *(str(archive[k]) for k in GOOD), "-o", str(out), "--dask", dask_client.scheduler.address]
    assert run_cli(argv, progress=CancelAfterOne(out)) == 130
    assert not out.exists()
    assert out.with_name(out.name + MANIFEST_SUFFIX).exists()
    progress = RecordingProgress()
    assert run_cli(argv, progress=progress) == 0
    assert any("were done by an earlier run" in m for m in progress.messages)
    assert gpkg_rows(out, "captions") == gpkg_rows(reference(list(GOOD)), "captions")
    assert not out.with_name(out.name + MANIFEST_SUFFIX).exists() and not out.with_name(out.name + PARTS_SUFFIX).exists()


def test_a_broken_raster_is_named_and_the_others_go_on(archive, reference, dask_client, tmp_path, capsys):
    out = tmp_path / "partly.gpkg"
    code = run_cli(["batch", str(archive["gradient"]), str(archive["broken"]), "-o", str(out),
                    "--dask", dask_client.scheduler.address])
    assert code == 3
    err = capsys.readouterr().err
    assert "Failed: broken: " in err and "is not a raster GDAL can read" in err
    assert gpkg_rows(out, "captions") == gpkg_rows(reference(["gradient"]), "captions")


def test_an_unreachable_scheduler_is_a_sentence_before_any_work(archive, tmp_path, capsys):
    out = tmp_path / "never.gpkg"
    assert run_cli(["batch", str(archive["gradient"]), "-o", str(out), "--dask", "tcp://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: The Dask scheduler at tcp://127.0.0.1:9 does not answer")
    assert list(tmp_path.iterdir()) == []


def test_without_dask_the_core_imports_and_says_how_to_install_it(archive, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "data" / "import_blocker"), str(ROOT)]),
               RSVLM_TEST_BLOCK="dask,distributed")
    out = tmp_path / "x.gpkg"
    done = subprocess.run([sys.executable, "-m", "rs_vlm_plugin", "batch", str(archive["gradient"]), "-o", str(out),
                           "-q", "--dask", "local:2"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"Error: {DASK_MISSING}"
    assert not out.exists()
