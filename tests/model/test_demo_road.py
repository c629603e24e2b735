"""The demo's search puts first a tile that the road runs through (issue 10's check of the default model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

rasterio = pytest.importorskip("rasterio")
ROOT = Path(__file__).resolve().parents[2]


def _annotations():
    spec = importlib.util.spec_from_file_location("demo_annotations", ROOT / "scripts" / "demo_annotations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_best_hit_for_a_road_through_a_forest_is_on_the_road(bundle, demo_scene):
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.core.jobs.search import search
    from rs_vlm_plugin.core.raster import open_raster

    annotations = _annotations()
    with rasterio.open(demo_scene) as ds:
        transform = ds.transform
    with open_raster(demo_scene) as source:
        found = search(source, bundle, "a paved road through a forest", config=JobConfig(max_hits=5))
    on_road = [annotations.runs_through(hit.extent, transform) for hit in found.hits]
    assert on_road[0], f"the first hit {found.hits[0].extent} misses the road; on the road: {on_road}"
    # The road crosses only part of the scene, so the check can fail: most fine tiles miss it.
    leaves = [t.extent for t in found.plan.leaves]
    assert sum(annotations.runs_through(e, transform) for e in leaves) < len(leaves) / 2
