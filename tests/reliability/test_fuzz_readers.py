"""Bounded, deterministic fuzzing of the raster reader and the index reader with hypothesis.

Real files are damaged (cut short, bytes overwritten, metadata values replaced) and read by the
real readers: every outcome must be a successful read or an :class:`RsVlmError` sentence, never
another exception. ``derandomize=True`` makes every run try the same examples; ``max_examples``
and the deadline keep it short.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.jobs.index import META_TABLE, EmbeddingIndex
from rs_vlm_plugin.core.raster import open_raster

FUZZ = settings(derandomize=True, max_examples=60, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def small_tif(tmp_path_factory) -> bytes:
    """The bytes of a 64 x 64 compressed RGB GeoTIFF with nodata (seeded)."""
    import hostile_data

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("fuzz") / "small.tif"
    data = rng.integers(1, 256, (3, 64, 64), dtype=np.uint8)
    data[:, :8, :8] = 0
    hostile_data.write_tif(path, data, nodata=0, tiled=False)
    return path.read_bytes()


def _damage(data: bytes, cut: int | None, edits: list[tuple[int, int]]) -> bytes:
    raw = bytearray(data if cut is None else data[:cut])
    for position, value in edits:
        if raw:
            raw[position % len(raw)] = value
    return bytes(raw)


def read_everything(path: Path) -> None:
    """Open a raster and read it as a job would: the overview, a tile, a corner, with masks."""
    with open_raster(path) as source:
        extent = source.georef.extent
        source.read_masked(extent, 32, 32)
        source.read(extent.quadrants()[3], 16, 16)


@FUZZ
@given(cut=st.none() | st.integers(0, 4096), edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)),
                                                           max_size=12))
def test_damaged_geotiffs_read_or_give_a_sentence(small_tif, cut, edits):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.tif"
        path.write_bytes(_damage(small_tif, cut, edits))
        try:
            read_everything(path)
            event("read")
        except RsVlmError as exc:
            event("sentence")
            assert str(exc).endswith((".", ")")) and len(str(exc)) > 20


@FUZZ
@given(cut=st.none() | st.integers(0, 1 << 17), edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)),
                                                              min_size=1, max_size=16))
def test_damaged_index_files_open_or_give_a_sentence(index_file, cut, edits):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "damaged.gpkg"
        path.write_bytes(_damage(index_file.read_bytes(), cut, edits))
        index = _open_or_sentence(path)
        if index is None:
            return
        assert len(index) == index.meta["tiles"]
        assert index.scores(np.ones(index.tokens.shape[1], np.float32)).shape == (len(index),)


def _open_or_sentence(path: Path):
    """The index at ``path``, or None after recording the sentence it was refused with (any other error fails)."""
    try:
        index = EmbeddingIndex.open(path)
    except RsVlmError as exc:
        event("sentence: " + str(exc).split(" (")[0].split(";")[0].replace(str(path), "INDEX"))
        return None
    event("opened")
    return index


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=8)
META_KEYS = ["format", "format_version", "tiles", "embed_dim", "extent", "native_gsd", "plan_config", "crs_wkt",
             "model_fingerprint", "source_name"]


@FUZZ
@given(key=st.sampled_from(META_KEYS), value=JSON)
def test_index_metadata_of_any_value_opens_or_gives_a_sentence(index_file, key, value):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "meta.gpkg"
        path.write_bytes(index_file.read_bytes())
        db = sqlite3.connect(path)
        with db:
            db.execute(f"UPDATE {META_TABLE} SET value = ? WHERE key = ?", (json.dumps(value), key))
        db.close()
        index = _open_or_sentence(path)
        if index is None:
            return
        assert len(index) >= 1
