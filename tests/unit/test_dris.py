"""DRIS planner invariants, table-driven (after torchgeo's tests/samplers/test_utils.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely import unary_union

from rs_vlm_plugin.core.planning.dris import PlanConfig, TilePlan, plan_tiles
from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.geometry import Extent

SEED = 0


def flat(height: int = 256, width: int = 256, value: int = 120) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def noise(height: int = 256, width: int = 256, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def patch_in_ne(height: int = 256, width: int = 256) -> np.ndarray:
    """Flat image with busy noise in the north-east quadrant only."""
    img = flat(height, width)
    img[: height // 2, width // 2:] = noise(height // 2, width - width // 2)
    return img


def assert_partition(plan: TilePlan) -> None:
    """Leaves cover the extent with no gaps and no overlaps."""
    target = plan.extent.to_polygon()
    polygons = [t.extent.to_polygon() for t in plan.leaves]
    union = unary_union(polygons)
    assert math.isclose(union.area, target.area, rel_tol=1e-9)
    assert math.isclose(sum(p.area for p in polygons), target.area, rel_tol=1e-9)
    assert union.symmetric_difference(target).area <= 1e-9 * target.area


def assert_not_finer_than_native(plan: TilePlan) -> None:
    for tile in plan.nodes:
        if tile.depth > 0:
            assert tile.gsd >= plan.native_gsd * (1 - 1e-9), tile


# (extent, native_gsd, image, config)
CASES = {
    "square-noise": (Extent(0, 0, 2048, 2048), 1.0, noise(), PlanConfig()),
    "square-patch": (Extent(0, 0, 2048, 2048), 1.0, patch_in_ne(), PlanConfig()),
    "wide-noise": (Extent(500_000, 4_000_000, 505_000, 4_002_000), 0.5, noise(128, 320), PlanConfig(max_tiles=30)),
    "tall-noise": (Extent(0, 0, 700, 2100), 0.3, noise(300, 100), PlanConfig(max_tiles=64, tile_size=128)),
    "degrees": (Extent(10.0, 59.9, 10.3, 60.0), 1e-5, noise(100, 300), PlanConfig(max_tiles=20)),
    "tiny-budget": (Extent(0, 0, 1000, 1000), 0.1, noise(), PlanConfig(max_tiles=1)),
    "pixel-budget": (Extent(0, 0, 1000, 1000), 0.1, noise(), PlanConfig(max_pixels=10 * 224 * 224)),
    "uniform": (Extent(0, 0, 1792, 1792), 1.0, noise(), PlanConfig(uniform=True)),
    "uniform-wide": (Extent(0, 0, 3000, 1000), 1.0, None, PlanConfig(uniform=True)),
}


@pytest.mark.parametrize("extent,native,image,config", CASES.values(), ids=CASES.keys())
def test_leaves_partition_the_extent(extent, native, image, config):
    plan = plan_tiles(extent, native, image, config)
    assert_partition(plan)
    assert_not_finer_than_native(plan)


@pytest.mark.parametrize("extent,native,image,config", CASES.values(), ids=CASES.keys())
def test_tree_is_consistent(extent, native, image, config):
    plan = plan_tiles(extent, native, image, config)
    keys = {t.key for t in plan.nodes}
    assert len(keys) == len(plan.nodes)
    for tile in plan.nodes:
        assert tile.depth == tile.key.count(".")
        assert tile.gsd == pytest.approx(max(tile.extent.width, tile.extent.height) / config.tile_size)
        children = plan.children_of(tile.key)
        assert len(children) == (0 if tile.is_leaf else 4)
        if children:
            assert [c.extent for c in children] == list(tile.extent.quadrants())
        if tile.depth > 0:
            assert tile.parent_key in keys


@pytest.mark.parametrize("max_tiles", [1, 2, 4, 7, 10, 16, 25, 48, 100])
def test_tile_budget_is_respected_and_used(max_tiles):
    plan = plan_tiles(Extent(0, 0, 4096, 4096), 0.25, noise(), PlanConfig(max_tiles=max_tiles))
    assert plan.n_tiles <= max(max_tiles, 1)
    assert plan.n_tiles > max_tiles - 3  # a busy image spends the budget down to the last split
    assert plan.pixels_encoded == plan.n_tiles * 224 * 224


@pytest.mark.parametrize("max_pixels,max_tiles,expected", [
    (1 * 224 * 224, 48, 1),
    (10 * 224 * 224, 48, 10),
    (10 * 224 * 224 + 5, 48, 10),
    (100 * 224 * 224, 13, 13),
    (200_000, 48, 1),  # 3.98 tiles of pixels: one split would need 4
])
def test_pixel_budget_and_tighter_budget_wins(max_pixels, max_tiles, expected):
    config = PlanConfig(max_tiles=max_tiles, max_pixels=max_pixels)
    assert config.leaf_budget == min(max_tiles, max_pixels // (224 * 224))
    plan = plan_tiles(Extent(0, 0, 4096, 4096), 0.25, noise(), config)
    assert plan.n_tiles == expected - (expected - 1) % 3
    assert plan.pixels_encoded <= max_pixels


def test_roots_over_budget_become_longer_cells():
    plan = plan_tiles(Extent(0, 0, 10_000, 1000), 0.1, noise(50, 500), PlanConfig(max_tiles=4))
    assert plan.n_tiles == 4  # ten near-square roots would break the budget
    assert plan.leaves == plan.roots
    assert_partition(plan)


@pytest.mark.parametrize("width,height,max_tiles", [
    (3, 60_000, 48), (60_000, 3, 48), (60_000, 3, 1), (1, 100_000, 7), (40_000, 40_000, 5), (9, 8, 2),
])
def test_budget_is_a_hard_bound_for_every_shape(width, height, max_tiles):
    coarse = noise(max(1, round(768 * height / max(width, height))), max(1, round(768 * width / max(width, height))))
    plan = plan_tiles(Extent(0, 0, width, height), 1.0, coarse, PlanConfig(max_tiles=max_tiles))
    assert 1 <= plan.n_tiles <= max_tiles
    assert len(plan.roots) <= max_tiles
    assert_partition(plan)


def test_uniform_strip_gets_tile_sized_roots_not_pixel_sized_ones():
    plan = plan_tiles(Extent(0, 0, 3, 60_000), 1.0, None, PlanConfig(uniform=True))
    assert plan.n_tiles == math.ceil(60_000 / 224)
    assert_partition(plan)


def test_uniform_grid_over_the_limit_is_refused_with_the_count():
    with pytest.raises(RsVlmError, match=r"would have 65,536 tiles.*--max-uniform-tiles 65536"):
        plan_tiles(Extent(0, 0, 57_344, 57_344), 1.0, None, PlanConfig(uniform=True))
    plan = plan_tiles(Extent(0, 0, 57_344, 57_344), 1.0, None, PlanConfig(uniform=True, max_uniform_tiles=None))
    assert plan.n_tiles == 65_536


def test_pixel_budget_below_one_tile_is_refused():
    with pytest.raises(RsVlmError, match="less than one tile"):
        PlanConfig(max_pixels=1)
    with pytest.raises(RsVlmError, match="tile limit"):
        PlanConfig(max_uniform_tiles=0)


@pytest.mark.parametrize("image", [flat(), flat(value=0), flat(value=255)], ids=["grey", "black", "white"])
def test_homogeneous_image_stays_at_the_roots(image):
    plan = plan_tiles(Extent(0, 0, 8192, 8192), 0.5, image, PlanConfig(max_tiles=100))
    assert plan.leaves == plan.roots
    assert plan.roots[0].complexity == pytest.approx(0.0, abs=1e-6)


def test_complex_patch_is_refined_there_and_nowhere_else():
    extent = Extent(0, 0, 4096, 4096)
    plan = plan_tiles(extent, 0.5, patch_in_ne(), PlanConfig(max_tiles=48))
    north_east = extent.quadrants()[1].to_polygon()
    deep = [t for t in plan.leaves if t.depth >= 2]
    assert deep, plan.summary()
    assert all(north_east.contains(t.extent.to_polygon()) for t in deep)
    # The three quiet quadrants are leaves at depth 1; the busy one went deeper.
    quiet = {t.key for t in plan.leaves if t.depth == 1}
    assert quiet == {"0.0", "0.2", "0.3"}
    assert max(t.depth for t in plan.leaves) > 2


def test_threshold_stops_refinement():
    image = patch_in_ne()
    plan = plan_tiles(Extent(0, 0, 4096, 4096), 0.5, image, PlanConfig(complexity_threshold=1.01))
    assert plan.leaves == plan.roots


@pytest.mark.parametrize("size,native,tile_size,depth", [
    (1792, 1.0, 224, 3),   # 224 * 8: exactly native at depth 3
    (1000, 1.0, 224, 2),   # 1000/224/4 = 1.1 >= 1 but /8 < 1
    (224, 1.0, 224, 0),    # the root is at native already
    (100, 1.0, 224, 0),    # the root is finer than native: never split
    (4096, 1.0, 64, 6),
])
def test_uniform_is_the_full_quadtree_down_to_native(size, native, tile_size, depth):
    config = PlanConfig(uniform=True, tile_size=tile_size, max_tiles=1)  # budget ignored
    plan = plan_tiles(Extent(0, 0, size, size), native, None, config)
    assert plan.n_tiles == 4 ** depth
    assert {t.depth for t in plan.leaves} == {depth}
    assert len(plan.nodes) == sum(4 ** d for d in range(depth + 1))
    assert_partition(plan)
    assert_not_finer_than_native(plan)


def test_uniform_non_square_and_complexity_filled():
    plan = plan_tiles(Extent(0, 0, 3584, 1792), 1.0, noise(128, 256), PlanConfig(uniform=True))
    assert len(plan.roots) == 2
    assert plan.n_tiles == 2 * 4 ** 3
    assert all(t.complexity > 0.5 for t in plan.nodes)


def test_dris_leaves_are_nodes_of_the_uniform_grid():
    extent, native = Extent(0, 0, 1792, 1792), 1.0
    dris = plan_tiles(extent, native, patch_in_ne(), PlanConfig(max_tiles=20))
    uniform = {t.key: t.extent for t in plan_tiles(extent, native, None, PlanConfig(uniform=True)).nodes}
    for tile in dris.nodes:
        assert uniform[tile.key] == tile.extent


def test_max_depth_caps_refinement():
    plan = plan_tiles(Extent(0, 0, 1e6, 1e6), 0.01, noise(), PlanConfig(max_tiles=1000, max_depth=2))
    assert plan.max_depth == 2


def test_plan_is_deterministic():
    args = (Extent(0, 0, 4096, 4096), 0.25, noise(), PlanConfig(max_tiles=37))
    first, second = plan_tiles(*args), plan_tiles(*args)
    assert first.nodes == second.nodes
    # Equal priorities (flat noise everywhere) are split in key order.
    tied = plan_tiles(Extent(0, 0, 4096, 4096), 0.25, flat(), PlanConfig(complexity_threshold=0.0, max_tiles=7))
    assert [t.key for t in tied.nodes if not t.is_leaf] == ["0", "0.0"]
    assert [t.key for t in tied.leaves] == ["0.1", "0.2", "0.3", "0.0.0", "0.0.1", "0.0.2", "0.0.3"]


@pytest.mark.parametrize("width,height,n_roots", [
    (1000, 1000, 1), (1400, 1000, 1), (1600, 1000, 2), (2500, 1000, 2), (3000, 1000, 3),
    (1000, 3300, 3), (7200, 1000, 7), (1000, 1490, 1),
])
def test_roots_are_near_square(width, height, n_roots):
    plan = plan_tiles(Extent(0, 0, width, height), 1.0, noise(64, 64), PlanConfig(max_tiles=48))
    assert len(plan.roots) == n_roots
    for root in plan.roots:
        aspect = max(root.extent.width, root.extent.height) / min(root.extent.width, root.extent.height)
        assert aspect <= 1.5 + 1e-9
    assert_partition(plan)


def test_summary():
    plan = plan_tiles(Extent(0, 0, 2048, 2048), 1.0, patch_in_ne(), PlanConfig(max_tiles=10))
    summary = plan.summary()
    assert summary["tiles"] == plan.n_tiles == sum(summary["depth_histogram"].values())
    assert summary["pixels"] == plan.n_tiles * 224 ** 2
    assert summary["min_gsd"] <= summary["max_gsd"] == pytest.approx(2048 / 224 / 2)


def test_bad_inputs():
    with pytest.raises(ValueError):
        plan_tiles(Extent(0, 0, 10, 10), 1.0, None, PlanConfig())
    with pytest.raises(ValueError):
        plan_tiles(Extent(0, 0, 10, 10), 0.0, flat(), PlanConfig())
    with pytest.raises(RsVlmError, match="budget"):
        PlanConfig(max_tiles=0)


def test_coarse_shape_keeps_the_aspect():
    assert PlanConfig(coarse_size=768).coarse_shape(Extent(0, 0, 2000, 1000)) == (768, 384)


def test_scene_detail_goes_to_the_urban_half(tmp_path):
    """End to end with a real file: overview read -> plan; the busy east half gets the tiles."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from make_geotiffs import make_all

    from rs_vlm_plugin.core.raster import open_raster

    config = PlanConfig(tile_size=64, max_tiles=30)
    with open_raster(make_all(tmp_path)["scene"]) as src:
        extent = src.georef.extent
        plan = plan_tiles(extent, src.georef.native_gsd, src.read(extent, *config.coarse_shape(extent)), config)
    centre_x = extent.center[0]
    west = [t for t in plan.leaves if t.extent.xmax <= centre_x]
    east = [t for t in plan.leaves if t.extent.xmin >= centre_x]
    assert [t.key for t in west] == ["0.0", "0.2"]  # the field stays coarse
    assert len(east) == plan.n_tiles - 2 and min(t.gsd for t in east) == pytest.approx(0.5)
    assert_partition(plan)
