"""Hostile inputs through ``python -m rs_vlm_plugin`` in a process of its own, one table row each.

These are the cases that the in-process table (``test_hostile_cli.py``) cannot hold: the real
stderr of the process (GDAL's own lines included), a time limit that kills (``timeout`` of the
process group), a changed environment (read-only HOME, ``ulimit -v``, no network, another user),
two writers at once, ``kill -9`` in the middle of a write, and model packages served by a real
HTTP server on 127.0.0.1 that misbehaves.

Every case ends in a correct result (exit 0, checked by ``check``) or in one sentence on stderr
and a non-zero exit; the files it could touch have the same SHA-256 after as before (only the
files a case may change, ``changes``, differ), and nothing is left behind but the output of a
job that succeeded (``creates``).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from osgeo import ogr
from reliability_support import check_sentence, record_case, snapshot

import hostile_data

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from http_server import FileServer  # noqa: E402

RASTER_COMMANDS = ("caption", "search", "classify", "ask", "index", "search-index")
NOBODY = 65534
MARKER = "PICKLE_RAN"
"""The file a pickle payload would create; a case passes only if it never appears (no new file)."""
SQL = "'); DROP TABLE gpkg_contents; --"
CONTROL = "trees\x01\x07\x1b[2J\r\x7f by the road"
WORDS_100_KB = ("a road through a forest next to a river with houses " * 2000)[:100_000]
CLASSES_1000 = ",".join(f"class {i}" for i in range(1000))
# What a text outside the model's concepts earns on stderr: one warning sentence per text (a few at most,
# then one count), and nothing else.
_UNFAMILIAR_LINE = r"Warning: RS-VLM has seen little like [^\n]*\n"
MAYBE_UNFAMILIAR = rf"^({_UNFAMILIAR_LINE})?$"  # "ice" is near the boundary: the model may know it
SQL_UNFAMILIAR = r"^Warning: RS-VLM has seen little like ''\); DROP TABLE gpkg_contents; --' [^\n]*\n$"
AT_MOST_SIX_WARNINGS = rf"^({_UNFAMILIAR_LINE}){{1,6}}$"
ORT_TELEMETRY = r"^(\S*\d{4}-\d\d-\d\d [\d:.]+ \[W:onnxruntime:Default, telemetry_1ds\.cc:\d+ operator\(\)\] Failed to persist " \
                r"telemetry device ID; using an in-memory identifier\S*\n)?$"
"""The one line a job may print where HOME is read-only: onnxruntime's own warning, at its import (not ours
to silence; the job's result is checked as any other)."""


@dataclass
class Context:
    """What a case's helpers share: its folder, the fixture files, the placeholders and cleanups."""

    folder: Path
    paths: dict[str, Path]
    stack: ExitStack
    fill: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    preexec: Callable[[], None] | None = None
    prefix: list[str] = field(default_factory=list)
    unprivileged: bool = False


@dataclass(frozen=True)
class ProcessCase:
    """One hostile command line, run as ``python -m rs_vlm_plugin ARGV -q``.

    Attributes:
        argv: The arguments; ``{name}`` is a fixture file, ``{dir}`` the case folder, ``{out}`` its
            output, ``{url}`` the server a maker started.
        code: The exit status expected: 0 (a correct result, see ``check``) or non-zero with one sentence.
        says: A regular expression the stderr must match (warnings of a job that succeeded).
        limit_s: The time limit: the process group is killed after it, and the case fails.
        make: Key of :data:`MAKERS`: files, a server or a registry in the case folder first.
        env: Key of :data:`ENVIRONMENTS`: how the process's environment differs.
        flow: Key of :data:`FLOWS`: a case of more than one process (two writers, a kill).
        check: Key of :data:`CHECKS`: what the result holds (default: the output has a layer with features).
        changes: Files of the case folder the case may change (an output replaced).
        creates: Files (globs in the case folder) a successful case may add.
        keeps: Files (globs) a refused case may leave (a download's part, kept for a resume).
        unprivileged: Run as user nobody where the suite runs as root (permissions apply to others only).
    """

    argv: tuple[str, ...]
    code: int
    says: str
    limit_s: float = 60.0
    make: str | None = None
    env: str | None = None
    flow: str | None = None
    check: str | None = None
    changes: tuple[str, ...] = ()
    creates: tuple[str, ...] = ("out.gpkg",)
    keeps: tuple[str, ...] = ()
    unprivileged: bool = False


# Makers: files and servers in the case folder ------------------------------------------------------

def _copy(name: str, target: str) -> Callable[[Context], None]:
    return lambda ctx: shutil.copyfile(ctx.paths[name], ctx.folder / target)


def _user_layers(path: Path) -> Path:
    """A GeoPackage the user made: ``my_roads`` (3 points) and ``my_fields`` (an attribute table)."""
    ogr.UseExceptions()
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("my_roads", None, ogr.wkbPoint)
    for i in range(3):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({500_010 + i} 4099990)"))
        layer.CreateFeature(feature)
    table = ds.CreateLayer("my_fields", None, ogr.wkbNone)
    table.CreateField(ogr.FieldDefn("crop", ogr.OFTString))
    feature = ogr.Feature(table.GetLayerDefn())
    feature.SetField("crop", "wheat")
    table.CreateFeature(feature)
    ds = None
    return path


def _fifo(ctx: Context) -> None:
    os.mkfifo(ctx.folder / "pipe.tif")


def _unreadable(ctx: Context) -> None:
    shutil.copyfile(ctx.paths["scene"], ctx.folder / "locked.tif")
    os.chmod(ctx.folder / "locked.tif", 0)


def _read_only_folder(ctx: Context) -> None:
    shutil.copyfile(ctx.paths["scene"], ctx.folder / "scene.tif")
    (ctx.folder / "ro").mkdir(mode=0o500)


def _read_only_home(ctx: Context) -> None:
    shutil.copyfile(ctx.paths["scene"], ctx.folder / "scene.tif")
    shutil.copyfile(ctx.paths["pkg_good"], ctx.folder / "tiny.zip")
    (ctx.folder / "home").mkdir(mode=0o555)


def _symlink_loop(ctx: Context) -> None:
    os.symlink(ctx.folder / "b.tif", ctx.folder / "a.tif")
    os.symlink(ctx.folder / "a.tif", ctx.folder / "b.tif")


def _damaged_gpkg(ctx: Context) -> None:
    data = _user_layers(ctx.folder / "user.gpkg").read_bytes()
    (ctx.folder / "user.gpkg").unlink()
    (ctx.folder / "out.gpkg").write_bytes(data[:100] + bytes(len(data) - 100))  # its header, then zeros


def _pickled_blob(ctx: Context) -> None:
    path = ctx.folder / "index.gpkg"
    shutil.copyfile(ctx.paths["index"], path)
    payload = hostile_data.pickle_npy(ctx.folder / "payload.npy", ctx.folder / MARKER).read_bytes()
    (ctx.folder / "payload.npy").unlink()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE rsvlm_index_embeddings SET data = ? WHERE name = 'embedding' AND chunk = 0", (payload,))
    db.close()


def _bundle(ctx: Context, edit: Callable[[Path], None]) -> None:
    """A copy of the real bundle (links to its files) in ``{dir}/model``, then ``edit`` of the copy."""
    model = ctx.folder / "model"
    model.mkdir()
    for file in ctx.paths["model"].iterdir():
        os.symlink(file, model / file.name)
    edit(model)


def _replace(model: Path, name: str, data: bytes) -> None:
    (model / name).unlink()
    (model / name).write_bytes(data)


def _server(behave: Callable[[FileServer, bytes], None] | None = None, sha: str | None = None):
    """A maker: a FileServer of the good package, and ``{dir}/registry.json`` listing it as ``tiny``."""
    def make(ctx: Context) -> None:
        site = ctx.folder / "site"
        site.mkdir()
        package = shutil.copyfile(ctx.paths["pkg_good"], site / "tiny-1.0.zip")
        server = ctx.stack.enter_context(FileServer(site))
        if behave:
            behave(server, package.read_bytes())
        _registry(ctx, server.base_url, package, sha)
    return make


def _silent_server(ctx: Context) -> None:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    ctx.stack.callback(listener.close)
    site = ctx.folder / "site"
    site.mkdir()
    package = shutil.copyfile(ctx.paths["pkg_good"], site / "tiny-1.0.zip")
    _registry(ctx, f"http://127.0.0.1:{listener.getsockname()[1]}/", package, None)


def _registry(ctx: Context, base_url: str, package: Path, sha: str | None) -> None:
    from rs_vlm_plugin.core.models.archive import sha256_of

    entry = {"name": "tiny", "version": "1.0", "file": package.name, "size": package.stat().st_size,
             "sha256": sha or sha256_of(package), "format_version": 2, "licence": "test"}
    (ctx.folder / "registry.json").write_text(json.dumps(
        {"format": "rs-vlm-model-registry", "version": 1, "base_url": base_url, "models": [entry]}))


def _drop(server: FileServer, data: bytes) -> None:
    server.behaviour.drop_after, server.behaviour.drops_left = 10_000, -1


def _truncate(server: FileServer, data: bytes) -> None:
    server.behaviour.replace = data[:-1000]


MAKERS: dict[str, Callable[[Context], None]] = {
    "fifo": _fifo,
    "unreadable": _unreadable,
    "read_only_folder": _read_only_folder,
    "read_only_home": _read_only_home,
    "symlink_loop": _symlink_loop,
    "raster_gpkg": _copy("raster_gpkg", "raster.gpkg"),
    "user_layers": lambda ctx: _user_layers(ctx.folder / "out.gpkg"),
    "damaged_gpkg": _damaged_gpkg,
    "unicode_folder": lambda ctx: (ctx.folder / "sortie à l'ombre 出力").mkdir(),
    "index_copy": _copy("index", "index.gpkg"),
    "pickled_blob": _pickled_blob,
    "manifest_list": lambda ctx: _bundle(ctx, lambda m: _replace(m, "manifest.json", b"[]")),
    "manifest_not_utf8": lambda ctx: _bundle(ctx, lambda m: _replace(m, "manifest.json", b'{"format": "\xff\xfe"}')),
    "pickled_knowledge": lambda ctx: _bundle(ctx, lambda m: (m / "kb_embeddings.npy").unlink() or hostile_data.pickle_npy(
        m / "kb_embeddings.npy", ctx.folder / MARKER)),
    "server": _server(),
    "server_wrong_sha": _server(sha="0" * 64),
    "server_truncated": _server(_truncate),
    "server_drops": _server(_drop),
    "silent_server": _silent_server,
}


# Environments -------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _no_network_prefix() -> tuple[str, ...] | None:
    """``unshare -n`` (root) or ``unshare -rn`` (a user namespace) where the machine allows it."""
    for prefix in (("unshare", "-n"), ("unshare", "-rn")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def _no_network(ctx: Context) -> None:
    prefix = _no_network_prefix()
    if prefix:
        ctx.prefix = list(prefix)
        return
    with socket.socket() as s:  # no namespace: every request goes to a proxy that is not there
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    ctx.env.update({k: dead for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
    ctx.env.update(no_proxy="", NO_PROXY="")


def _address_space(ctx: Context) -> None:
    limit = 3 << 30
    ctx.preexec = lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _home(ctx: Context) -> None:
    ctx.env.update(HOME=str(ctx.folder / "home"), XDG_DATA_HOME="", XDG_CACHE_HOME="", RSVLM_MODELS_DIR="")


ENVIRONMENTS: dict[str, Callable[[Context], None]] = {
    "no_network": _no_network,
    "ulimit_v_3g": _address_space,
    "read_only_home": _home,
}


# Running and checking -------------------------------------------------------------------------------

def run_process(ctx: Context, argv: list[str], limit_s: float) -> subprocess.Popen:
    """Start ``python -m rs_vlm_plugin ARGV`` for the case (its environment, its user)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ctx.env}
    for key in [k for k, v in env.items() if v == ""]:
        del env[key]
    user = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if ctx.unprivileged else {}
    return subprocess.Popen([*ctx.prefix, sys.executable, "-m", "rs_vlm_plugin", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="backslashreplace", start_new_session=True, preexec_fn=ctx.preexec, **user)


def finish(process: subprocess.Popen, limit_s: float) -> tuple[int, str, str]:
    """Wait for a process; past ``limit_s`` its group is killed and the case fails."""
    try:
        out, err = process.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"ran past its time limit of {limit_s:g} s (killed); stderr: {err[-2000:]}")
    return process.returncode, out, err


def _layers(path: Path) -> dict[str, int]:
    ogr.UseExceptions()
    ds = ogr.Open(str(path))
    try:
        return {ds.GetLayer(i).GetName(): ds.GetLayer(i).GetFeatureCount() for i in range(ds.GetLayerCount())}
    finally:
        ds = None


def _values(path: Path, layer: str, name: str) -> list:
    ds = ogr.Open(str(path))
    try:
        return [feature.GetField(name) for feature in ds.GetLayerByName(layer)]
    finally:
        ds = None


def _envelopes(path: Path) -> list[tuple[float, float, float, float]]:
    ds = ogr.Open(str(path))
    try:
        return [feature.GetGeometryRef().GetEnvelope() for i in range(ds.GetLayerCount())
                for feature in ds.GetLayer(i) if feature.GetGeometryRef() is not None]
    finally:
        ds = None


def _within_raster(name: str) -> Callable[[Context, str], None]:
    """Every record lies within the raster's bounds (and, in degrees, on the globe)."""
    def check(ctx: Context, out: str) -> None:
        import rasterio

        with rasterio.open(ctx.paths[name]) as ds:
            b, geographic = ds.bounds, ds.crs.is_geographic
        envelopes = _envelopes(ctx.folder / "out.gpkg")
        assert envelopes
        slack = 1e-6 * max(b.right - b.left, b.top - b.bottom)
        for xmin, xmax, ymin, ymax in envelopes:
            assert b.left - slack <= xmin <= xmax <= b.right + slack and b.bottom - slack <= ymin <= ymax <= b.top + slack
            if geographic:
                assert -90 - slack <= ymin <= ymax <= 90 + slack
    return check


def _no_crs(ctx: Context, out: str) -> None:
    db = sqlite3.connect(ctx.folder / "out.gpkg")
    try:
        ids = {row[0] for row in db.execute("SELECT srs_id FROM gpkg_contents WHERE data_type = 'features'")}
    finally:
        db.close()
    assert ids == {-1}  # the undefined Cartesian SRS, not degrees


def _palette(ctx: Context, out: str) -> None:
    import rasterio

    from rs_vlm_plugin.core.raster import open_raster

    with rasterio.open(ctx.paths["palette"]) as ds:
        index, table = ds.read(1), ds.colormap(1)
    with open_raster(ctx.paths["palette"]) as source:
        source.balance_bytes = False
        rgb, valid = source.read_masked(source.georef.extent, 256, 256)
    colours = np.array([table.get(i, (0, 0, 0, 0)) for i in range(256)], np.uint8)
    assert np.array_equal(valid, colours[index, 3] > 0)  # transparent entries of the table are nodata
    assert np.array_equal(rgb[valid], colours[index[valid], :3])  # the colours, not the indices as grey
    assert len(np.unique(rgb[valid][:, 1])) > 1
    assert sum(_layers(ctx.folder / "out.gpkg").values()) >= 1


def _keeps_user_layers(*written: str) -> Callable[[Context, str], None]:
    def check(ctx: Context, out: str) -> None:
        layers = _layers(ctx.folder / "out.gpkg")
        assert layers["my_roads"] == 3 and layers["my_fields"] == 1, layers
        assert all(layers.get(name, 0) >= 1 for name in written), layers
    return check


def _stored(layer: str, column: str, text: str) -> Callable[[Context, str], None]:
    def check(ctx: Context, out: str) -> None:
        values = _values(ctx.folder / "out.gpkg", layer, column)
        assert values and all(v == text for v in values), values[:3]
        db = sqlite3.connect(ctx.folder / "out.gpkg")
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        finally:
            db.close()
        assert "gpkg_contents" in tables and layer in tables
    return check


def _classes_from(names: str) -> Callable[[Context, str], None]:
    def check(ctx: Context, out: str) -> None:
        allowed = {n.strip() for n in names.split(",")}
        values = _values(ctx.folder / "out.gpkg", "classes", "class")
        assert values and set(values) <= allowed, values[:3]
    return check


def _installed(ctx: Context, out: str) -> None:
    models = ctx.folder / "models"
    assert sorted(p.name for p in models.iterdir() if p.name != ".downloads") == ["tiny"]
    assert json.loads((models / "tiny" / "manifest.json").read_text())["name"] == "tiny"
    assert not any((models / ".downloads").iterdir()) if (models / ".downloads").exists() else True


def _index_of_large(ctx: Context, out: str) -> None:
    from rs_vlm_plugin.core.jobs.index import EmbeddingIndex

    index = EmbeddingIndex.open(ctx.folder / "index.gpkg")
    assert index.source_name == "large" and len(index) >= 1


def _hits_at_most_tiles(ctx: Context, out: str) -> None:
    layers = _layers(ctx.folder / "out.gpkg")
    assert 1 <= layers["search_hits"] <= 200, layers


def _huge(ctx: Context, out: str) -> None:
    _within_raster("huge_vrt")(ctx, out)
    assert len(_envelopes(ctx.folder / "out.gpkg")) <= 40  # the budget, not 200,000 px at full resolution


def _models_listed(ctx: Context, out: str) -> None:
    assert "rs-vlm-lite0" in out


CHECKS: dict[str, Callable[[Context, str], None]] = {
    "no_crs": _no_crs,
    "palette": _palette,
    "polar_globe": _within_raster("polar_globe"),
    "north_cap": _within_raster("north_cap"),
    "antimeridian": _within_raster("antimeridian"),
    "huge": _huge,
    "keeps_user_layers": _keeps_user_layers("captions_global", "captions_region"),
    "sql_query": _stored("search_hits", "query", SQL),
    "control_query": _stored("search_hits", "query", CONTROL),
    "sql_classes": _classes_from(f"forest, {SQL}, water"),
    "classes_1000": _classes_from(CLASSES_1000),
    "installed": _installed,
    "index_of_large": _index_of_large,
    "hits_at_most_tiles": _hits_at_most_tiles,
    "models_listed": _models_listed,
    "sql_output_name": lambda ctx, out: _layers(ctx.folder / ("x" + SQL + ".gpkg"))["captions_global"] == 1
    or pytest.fail("no global caption"),
    "unicode_output": lambda ctx, out: _layers(ctx.folder / "sortie à l'ombre 出力" / "résultat 1.gpkg")["captions_global"] == 1
    or pytest.fail("no global caption"),
    "two_writers": lambda ctx, out: None,  # the flow checked the layers of each writer
    "kill_mid_write": _keeps_user_layers("search_hits"),
}


# Flows: cases of more than one process ----------------------------------------------------------------

def _two_writers(ctx: Context, argv: list[str], case: ProcessCase) -> tuple[int, str, str]:
    """A caption and a search started at once into one GeoPackage holding the user's layers: each
    finishes (its layers added) or is refused by the lock in one sentence; the user's layers stay."""
    other = [a for a in argv]
    other[0:1] = ["search"]
    other.insert(2, "trees")
    first, second = run_process(ctx, argv, case.limit_s), run_process(ctx, other, case.limit_s)
    results = [finish(first, case.limit_s), finish(second, case.limit_s)]
    for code, _, err in results:
        assert code in (0, 1), err
        if code == 1:
            check_sentence(err)
            assert "Another job is writing" in err, err
    assert any(code == 0 for code, _, _ in results)
    layers = _layers(ctx.folder / "out.gpkg")
    assert layers["my_roads"] == 3 and layers["my_fields"] == 1, layers
    assert ("captions_global" in layers) == (results[0][0] == 0) and ("search_hits" in layers) == (results[1][0] == 0)
    return 0, results[0][1], results[0][2] if results[0][0] == 0 else results[1][2]


def _kill_mid_write(ctx: Context, argv: list[str], case: ProcessCase) -> tuple[int, str, str]:
    """``kill -9`` while the GeoPackage is being written (its temporary file exists): the earlier layers
    are intact, byte for byte; the same command run again finishes and cleans up after the killed one."""
    from reliability_support import sha256

    out = ctx.folder / "out.gpkg"
    earlier, before = out.read_bytes(), sha256(out)
    for _ in range(5):  # a try whose job finished before the kill landed is made again
        process = run_process(ctx, argv, case.limit_s)
        deadline, killed = time.monotonic() + case.limit_s, False
        while process.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".out.tmp-") for p in ctx.folder.iterdir()):
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.0005)
        code, _, err = finish(process, case.limit_s)
        left = [p for p in ctx.folder.iterdir() if p.name.startswith(".out.tmp-")]
        if killed and code == -signal.SIGKILL and left:
            break
        # it finished (or renamed its file) before the kill: the new file is whole; start again from the earlier one
        assert sha256(out) == before or _layers(out).get("search_hits", 0) >= 1, err
        out.write_bytes(earlier)
        for path in left:
            path.unlink()
    else:
        pytest.fail("five jobs finished before they could be killed mid-write")
    assert sha256(out) == before  # the earlier layers, intact
    assert _layers(out) == {"my_roads": 3, "my_fields": 1}
    return finish(run_process(ctx, argv, case.limit_s), case.limit_s)  # cleans the killed job's files up


FLOWS: dict[str, Callable[[Context, list[str], ProcessCase], tuple[int, str, str]]] = {
    "two_writers": _two_writers,
    "kill_mid_write": _kill_mid_write,
}


CAP = ("caption", "{scene}", "-o", "{out}", "--max-tiles", "4")
INSTALL = ("models", "install", "tiny", "--registry", "{dir}/registry.json", "--models-dir", "{dir}/models",
           "--timeout", "2")
LOCAL = ("--models-dir", "{dir}/models")
MODELS = ("models/tiny/*",)
P = ProcessCase
PROCESS_CASES: dict[str, ProcessCase] = {
    # Rasters.
    "renamed_png": P(("caption", "{renamed_png}", "-o", "{out}", "--max-tiles", "4"), 0, r"^Warning: The raster has no CRS",
                     check="no_crs"),
    "zero_by_zero_vrt": P(("caption", "{zero_vrt}", "-o", "{out}"), 1, r"not a raster GDAL can read"),
    "sixteen_bit": P(("caption", "{uint16}", "-o", "{out}", "--max-tiles", "4"), 0, r"is not 8-bit \(uint16\)"),
    "nan_patches_no_nodata": P(("search", "{nan_patches}", "trees", "-o", "{out}", "--max-tiles", "4"), 0,
                               r"is not 8-bit \(float32\)"),
    "palette": P(("caption", "{palette}", "-o", "{out}", "--max-tiles", "4"), 0, r"^$", check="palette"),
    "twelve_bands": P(("classify", "{bands12}", "forest, water", "-o", "{out}", "--max-tiles", "4"), 0,
                      r"is not 8-bit \(uint16\)"),
    "no_crs_geotiff": P(("caption", "{no_crs}", "-o", "{out}", "--max-tiles", "4"), 0, r"has no CRS", check="no_crs"),
    "rotated": P(("caption", "{rotated}", "-o", "{out}"), 1, r"is rotated or sheared; warp it"),
    "polar_whole_globe_4326": P(("caption", "{polar_globe}", "-o", "{out}", "--max-tiles", "4"), 0, r"^$",
                                check="polar_globe"),
    "north_pole_cap_4326": P(("search", "{north_cap}", "ice", "-o", "{out}", "--max-tiles", "4"), 0, MAYBE_UNFAMILIAR,
                             check="north_cap"),
    "beyond_the_pole_4326": P(("caption", "{beyond_pole}", "-o", "{out}"), 1, r"reaches latitude 95, beyond the pole"),
    "antimeridian_4326": P(("caption", "{antimeridian}", "-o", "{out}", "--max-tiles", "4"), 0, r"^$",
                           check="antimeridian"),
    "vrt_200000_px": P(("caption", "{huge_vrt}", "-o", "{out}", "--max-tiles", "8"), 0, r"^$", limit_s=120,
                       check="huge"),
    "self_referencing_vrt": P(("caption", "{self_vrt}", "-o", "{out}"), 1, r"self\.vrt", limit_s=60),
    "fifo_named_tif": P(("caption", "{dir}/pipe.tif", "-o", "{out}"), 1, r"is not a regular file \(a named pipe",
                        limit_s=20, make="fifo"),
    "unreadable_as_a_user": P(("caption", "{dir}/locked.tif", "-o", "{out}"), 1, r"cannot be read \(Permission denied\)",
                              make="unreadable", unprivileged=True),
    "unicode_and_spaces": P(("caption", "{unicode}", "-o", "{dir}/sortie à l'ombre 出力/résultat 1.gpkg",
                             "--max-tiles", "4"), 0, r"^$", make="unicode_folder",
                            creates=("sortie à l'ombre 出力/résultat 1.gpkg",), check="unicode_output"),
    "truncated_geotiff_real_stderr": P(("caption", "{truncated}", "-o", "{out}"), 1, r"damaged or incomplete"),
    "symlink_loop": P(("caption", "{dir}/a.tif", "-o", "{out}"), 1, r"does not exist", make="symlink_loop"),
    # Outputs.
    "output_is_the_input_gpkg": P(("caption", "{dir}/raster.gpkg", "-o", "{dir}/raster.gpkg", "--overwrite"), 1,
                                  r"is the input file", make="raster_gpkg"),
    "gpkg_other_layers_survive": P((*CAP, "--overwrite"), 0, r"^$", make="user_layers", changes=("out.gpkg",),
                                   check="keeps_user_layers"),
    "gpkg_other_layers_no_overwrite": P(CAP, 1, r"already exists; .*--overwrite", make="user_layers"),
    "gpkg_damaged_kept": P((*CAP, "--overwrite"), 1, r"cannot be read .*left as it is", make="damaged_gpkg"),
    "read_only_folder_as_a_user": P(("caption", "{dir}/scene.tif", "-o", "{dir}/ro/out.gpkg"), 1, r"is not writable",
                                    make="read_only_folder", unprivileged=True),
    "two_processes_one_gpkg": P((*CAP, "--overwrite"), 0, r"^$", limit_s=120, make="user_layers", flow="two_writers",
                                changes=("out.gpkg",), check="two_writers"),
    "kill_9_mid_write": P(("search", "{scene}", "trees", "-o", "{out}", "--max-tiles", "4", "--overwrite"), 0, r"^$",
                          limit_s=60, make="user_layers", flow="kill_mid_write", changes=("out.gpkg",),
                          check="kill_mid_write"),
    "sql_in_output_name": P(("caption", "{scene}", "-o", "{dir}/x" + SQL + ".gpkg", "--max-tiles", "4"), 0, r"^$",
                            creates=("x*.gpkg",), check="sql_output_name"),
    # Arguments.
    "empty_raster_argument": P(("caption", "", "-o", "{out}"), 1, r"raster file \. is a folder"),
    "empty_output_argument": P(("caption", "{scene}", "-o", ""), 1, r"output \. is a folder"),
    "empty_query": P(("search", "{scene}", "", "-o", "{out}"), 1, r"search text is empty"),
    "query_100_kb": P(("search", "{scene}", WORDS_100_KB, "-o", "{out}", "--max-tiles", "4"), 0,
                      r"too long for the model.*100,000 characters"),
    "control_characters_in_query": P(("search", "{scene}", CONTROL, "-o", "{out}", "--max-tiles", "4"), 0, r"^$",
                                     check="control_query"),
    "newline_in_output_name": P(("caption", "{scene}", "-o", "{dir}/out\nput.shp"), 1, r"out\\nput\.shp is not a GeoPackage"),
    "escape_in_raster_name": P(("caption", "{dir}/\x1b[2Jgone.tif", "-o", "{out}"), 1, r"\\x1b\[2Jgone\.tif does not exist"),
    "sql_like_query": P(("search", "{scene}", SQL, "-o", "{out}", "--max-tiles", "4"), 0, SQL_UNFAMILIAR, check="sql_query"),
    "sql_like_classes": P(("classify", "{scene}", f"forest, {SQL}, water", "-o", "{out}", "--max-tiles", "4"), 0, SQL_UNFAMILIAR,
                          check="sql_classes"),
    "sql_like_index_query": P(("search-index", "{index}", SQL, "-o", "{out}"), 0, SQL_UNFAMILIAR, check="sql_query"),
    "max_tiles_negative": P(("caption", "{scene}", "-o", "{out}", "--max-tiles", "-5"), 1, r"--max-tiles must be at least 1"),
    "max_tiles_10e9": P(("caption", "{scene}", "-o", "{out}", "--max-tiles", "1000000000"), 0, r"^$"),
    "max_pixels_10e9": P((*CAP, "--max-pixels", "1000000000"), 0, r"^$"),
    "max_pixels_zero": P((*CAP, "--max-pixels", "0"), 1, r"less than one tile"),
    "top_k_10e9": P(("search", "{scene}", "trees", "-o", "{out}", "--top-k", "1000000000", "--max-tiles", "4"), 0,
                    r"^$", check="hits_at_most_tiles"),
    "max_hits_10e9": P(("search-index", "{index}", "trees", "-o", "{out}", "--max-hits", "1000000000"), 0, r"^$",
                       check="hits_at_most_tiles"),
    "classes_1000": P(("classify", "{scene}", CLASSES_1000, "-o", "{out}", "--max-tiles", "1"), 0, AT_MOST_SIX_WARNINGS, limit_s=300,
                      check="classes_1000"),
    "extent_inverted": P((*CAP, "--extent", "500100", "4100000", "500000", "4099900"), 1, r"is empty; give xmin < xmax"),
    "extent_nan": P((*CAP, "--extent", "nan", "4099900", "500100", "4100000"), 1, r"is empty"),
    # Indexes.
    "index_over_another_rasters_index": P(("index", "{large}", "-o", "{dir}/index.gpkg", "--max-tiles", "4"), 1,
                                          r"already exists", make="index_copy"),
    "index_replacing_another_rasters": P(("index", "{large}", "-o", "{dir}/index.gpkg", "--max-tiles", "4",
                                          "--overwrite"), 0, r"^$", make="index_copy", changes=("index.gpkg",),
                                         check="index_of_large"),
    "index_blob_is_a_pickle": P(("search-index", "{dir}/index.gpkg", "trees", "-o", "{out}"), 1, r"damaged or incomplete",
                                make="pickled_blob"),
    # Model packages and bundles.
    "package_good": P(("models", "install", "{pkg_good}", *LOCAL), 0, r"^$", creates=MODELS, check="installed"),
    "package_path_traversal": P(("models", "install", "{pkg_traversal}", *LOCAL), 1, r"exactly one folder"),
    "package_absolute_member": P(("models", "install", "{pkg_absolute}", *LOCAL), 1, r"exactly one folder"),
    "package_symlink_member": P(("models", "install", "{pkg_symlink}", *LOCAL), 1, r"is a symbolic link"),
    "package_zip_bomb": P(("models", "install", "{pkg_bomb}", *LOCAL), 1, r"a zip bomb"),
    "package_wrong_sha256_inside": P(("models", "install", "{pkg_bad_sum}", *LOCAL), 1, r"its SHA-256 differs"),
    "package_cut_short": P(("models", "install", "{pkg_cut}", *LOCAL), 1, r"is not a model package"),
    "package_bad_crc": P(("models", "install", "{pkg_bad_crc}", *LOCAL), 1, r"is damaged .*Bad CRC-32"),
    "package_manifest_not_json": P(("models", "install", "{pkg_manifest_not_json}", *LOCAL), 1, r"is not valid JSON"),
    "package_manifest_a_list": P(("models", "install", "{pkg_manifest_list}", *LOCAL), 1, r"holds a list"),
    "package_manifest_not_utf8": P(("models", "install", "{pkg_manifest_not_utf8}", *LOCAL), 1, r"not valid JSON"),
    "download_good": P(INSTALL, 0, r"^$", make="server", creates=MODELS, check="installed"),
    "download_wrong_sha256": P(INSTALL, 1, r"is not the expected one .*nothing was installed", make="server_wrong_sha"),
    "download_truncated": P(INSTALL, 1, r"interrupted after", make="server_truncated",
                            keeps=("models/.downloads/*.part",)),
    "download_connection_dropped": P(INSTALL, 1, r"interrupted after 10,000 of", make="server_drops",
                                     keeps=("models/.downloads/*.part",)),
    "download_server_never_answers": P(INSTALL, 1, r"could not be downloaded .*timed out", limit_s=30,
                                       make="silent_server"),
    "bundle_manifest_a_list": P((*CAP, "--model", "{dir}/model"), 1, r"holds a list", make="manifest_list"),
    "bundle_manifest_not_utf8": P((*CAP, "--model", "{dir}/model"), 1, r"is not valid JSON", make="manifest_not_utf8"),
    "bundle_pickled_knowledge_base": P((*CAP, "--model", "{dir}/model"), 1, r"knowledge base .* allow_pickle=False",
                                       make="pickled_knowledge"),
    # Environment.
    "read_only_home_caption": P(("caption", "{dir}/scene.tif", "-o", "{out}", "--max-tiles", "4"), 0, ORT_TELEMETRY,
                                make="read_only_home", env="read_only_home", unprivileged=True),
    "read_only_home_models_list": P(("models", "list"), 0, r"^$", make="read_only_home", env="read_only_home",
                                    unprivileged=True, check="models_listed"),
    "read_only_home_models_install": P(("models", "install", "{dir}/tiny.zip"), 1, r"models folder .* cannot be created",
                                       make="read_only_home", env="read_only_home", unprivileged=True),
    "ulimit_v_3g_search": P(("search", "{large}", "trees", "-o", "{out}", "--max-tiles", "16"), 0, r"^$",
                            env="ulimit_v_3g", limit_s=120),
    "no_network_caption": P(CAP, 0, r"^$", env="no_network"),
    "no_network_download": P(("models", "install", "rs-vlm-lite0", *LOCAL, "--timeout", "5"), 1,
                             r"could not be downloaded .*check the network", env="no_network", limit_s=30),
}


@pytest.fixture()
def process_paths(hostile, index_file, packages, bundle_dir) -> dict[str, Path]:
    return {**hostile, **packages, "index": index_file, "model": bundle_dir}


def _case_folder(tmp_path: Path, unprivileged: bool, stack: ExitStack) -> Path:
    """The case folder; one that user nobody can reach where the case runs as nobody."""
    if not unprivileged:
        folder = tmp_path / "case"
        folder.mkdir()
        return folder
    folder = Path(tempfile.mkdtemp(prefix="rsvlm-hostile-"))
    os.chmod(folder, 0o755)

    def remove() -> None:
        for path in [folder, *folder.rglob("*")]:
            if not path.is_symlink():
                os.chmod(path, 0o700)
        shutil.rmtree(folder, ignore_errors=True)

    stack.callback(remove)
    return folder


def _writable_again(folder: Path) -> None:
    """Give back the permissions a case took away, so that its folder can be removed."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755)


def _give_to_nobody(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)


@pytest.mark.parametrize("name", list(PROCESS_CASES))
def test_hostile_process_case(name, process_paths, tmp_path, request):
    case = PROCESS_CASES[name]
    row = record_case(request, "process", name, case.argv, case.code, case.says, case.limit_s)
    with ExitStack() as stack:
        as_nobody = case.unprivileged and os.geteuid() == 0
        folder = _case_folder(tmp_path, as_nobody, stack)
        ctx = Context(folder, process_paths, stack, unprivileged=as_nobody)
        stack.callback(_writable_again, folder)
        if case.make:
            MAKERS[case.make](ctx)
        if case.env:
            ENVIRONMENTS[case.env](ctx)
        if as_nobody:
            _give_to_nobody(folder)
        fill = {k: str(v) for k, v in process_paths.items()} | {"out": str(folder / "out.gpkg"), "dir": str(folder)}
        argv = [re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], part) for part in case.argv]
        if argv[0] in RASTER_COMMANDS and "--model" not in argv:
            argv += ["--model", fill["model"]]
        argv.append("-q")
        watched = sorted({Path(v).parent for v in process_paths.values()} | {folder})
        before = snapshot(*watched)

        start = time.monotonic()
        if case.flow:
            code, out, err = FLOWS[case.flow](ctx, argv, case)
        else:
            code, out, err = finish(run_process(ctx, argv, case.limit_s), case.limit_s)
        row["got"], row["seconds"] = code, time.monotonic() - start

        after = snapshot(*watched)
        assert code == case.code, err
        assert "Traceback" not in err, err
        if code != 0:
            check_sentence(err)
        assert re.search(case.says, err, re.S), err
        changed = [p for p in before if p.name not in case.changes and after.get(p) != before[p]]
        assert not changed, f"changed or removed: {changed}"
        new = sorted(set(after) - set(before))
        allowed = {p for pattern in (case.creates if code == 0 else case.keeps) for p in folder.glob(pattern)}
        assert set(new) <= allowed, f"left behind: {new}"
        assert not (folder / MARKER).exists()
        if code == 0:
            if case.check:
                CHECKS[case.check](ctx, out)
            else:
                assert sum(_layers(folder / "out.gpkg").values()) >= 1
            assert not list(folder.glob("*.lock")) and not list(folder.glob(".*.tmp-*"))
