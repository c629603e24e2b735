"""Shared fixtures: the exported default bundle and the sample imagery fetched at set-up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / ".cache" / "samples"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        message = f"{what} is missing at {path}; run `python3 build.py setup` first."
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    """The default model bundle (exported by build.py setup)."""
    from rs_vlm_plugin.core.bundle import default_bundle_dir

    return _require(default_bundle_dir(), "The default model bundle").resolve()


@pytest.fixture(scope="session")
def bundle(bundle_dir):
    """The default model, loaded once per test session."""
    from rs_vlm_plugin.core.bundle import ModelBundle

    return ModelBundle.load(bundle_dir)


@pytest.fixture(scope="session")
def demo_scene() -> Path:
    """The real NEON aerial scene (deepforest wheel), as a GeoTIFF written at set-up."""
    return _require(SAMPLES / "demo_scene.tif", "The demo scene")


@pytest.fixture(scope="session")
def osbs_scene() -> Path:
    """The georeferenced NEON OSBS_029 GeoTIFF exactly as the deepforest wheel ships it."""
    return _require(SAMPLES / "OSBS_029.tif", "The OSBS_029 sample")


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> dict:
    """Seeded generated GeoTIFFs (tests/data/make_geotiffs.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_geotiffs", ROOT / "tests" / "data" / "make_geotiffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_all(tmp_path_factory.mktemp("generated"), seed=0)
