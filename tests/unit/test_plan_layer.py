"""The DRIS plan as records for the "where compute went" layer."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.planning.dris import PlanConfig, plan_tiles
from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.gpkg import SCHEMAS
from rs_vlm_plugin.core.planning.plan_layer import PLAN_LAYER, plan_records
from rs_vlm_plugin.core.records import PlanTileRecord


def busy_right_half(size: int = 256) -> np.ndarray:
    """A plain left half and a noisy right half, so DRIS refines only on the right."""
    rng = np.random.default_rng(0)
    image = np.full((size, size, 3), 120, np.uint8)
    image[:, size // 2:] = rng.integers(0, 255, (size, size // 2, 3), dtype=np.uint8)
    return image


def test_plan_records_mirror_the_plan():
    extent = Extent(0.0, 0.0, 512.0, 512.0)  # feet, say: 0.3048 m per unit
    plan = plan_tiles(extent, 0.5, busy_right_half(), PlanConfig(max_tiles=10, tile_size=64))
    records = plan_records(plan, 0.3048, "scene")
    assert PLAN_LAYER == "dris_plan"
    assert [r.key for r in records] == [t.key for t in plan.nodes]
    assert sum(r.is_leaf for r in records) == plan.n_tiles and plan.max_depth >= 1
    for record, tile in zip(records, plan.nodes):
        assert isinstance(record, PlanTileRecord) and record.source == "scene"
        assert record.depth == tile.depth and record.extent == tile.extent
        assert record.gsd_m == pytest.approx(tile.gsd * 0.3048)
    leaves = plan_records(plan, 1.0, "scene", leaves_only=True)
    assert [r.key for r in leaves] == [t.key for t in plan.leaves]
    deep = [r for r in leaves if r.depth == plan.max_depth]
    assert all(r.extent.xmin >= 256.0 for r in deep)  # the refinement went to the busy half


def test_plan_schema_has_the_fields_the_style_reads():
    names = [f.name for f in SCHEMAS[PlanTileRecord]]
    assert names == ["key", "depth", "complexity", "is_leaf", "gsd_m", "source", "reason", "score"]
    record = PlanTileRecord("0.1", 1, 0.4, True, 0.25, Extent(0, 0, 1, 1), "scene", "query", 0.31)
    assert [f.value(record) for f in SCHEMAS[PlanTileRecord]] == ["0.1", 1, 0.4, 1, 0.25, "scene", "query", 0.31]
