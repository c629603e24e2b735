"""Fixtures of the reliability suite: seeded hostile files (``hostile_data.py``), a real index,
and the bookkeeping that proves a failed job changed nothing.

Every case snapshots the files it could touch (sha256 of each) before it runs and compares
after: inputs and pre-existing files are unchanged, and the only new file is the output of a
job that succeeded (no temporary GeoPackage, journal or lock file is left behind).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import hostile_data  # noqa: E402
from reliability_support import sha256  # noqa: E402


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """The hostile rasters (see :func:`hostile_data.make_rasters`)."""
    return hostile_data.make_rasters(tmp_path_factory.mktemp("hostile"), seed=0)


@pytest.fixture(scope="session")
def broken_models(tmp_path_factory, bundle_dir) -> dict[str, Path]:
    """Broken copies of the real bundle; the real bundle's files are checked unchanged at the end."""
    before = {p: sha256(p) for p in sorted(bundle_dir.iterdir()) if p.is_file()}
    yield hostile_data.make_models(tmp_path_factory.mktemp("models"), bundle_dir)
    after = {p: sha256(p) for p in sorted(bundle_dir.iterdir()) if p.is_file()}
    assert after == before, "a test changed the model bundle"


@pytest.fixture(scope="session")
def index_file(tmp_path_factory, hostile, bundle_dir) -> Path:
    """A real index of the hostile scene, built by the command line."""
    from rs_vlm_plugin.core.cli import main

    path = tmp_path_factory.mktemp("index") / "scene.rsvlm-index.gpkg"
    assert main(["index", str(hostile["scene"]), "-o", str(path), "--max-tiles", "4", "-q",
                 "--model", str(bundle_dir)]) == 0
    return path


@pytest.fixture(scope="session")
def broken_indexes(tmp_path_factory, index_file) -> dict[str, Path]:
    """Damaged copies of the real index (see :func:`hostile_data.make_broken_indexes`)."""
    return hostile_data.make_broken_indexes(index_file, tmp_path_factory.mktemp("indexes"))
