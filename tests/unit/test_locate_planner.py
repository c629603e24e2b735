"""Native-grid and query-guided planning, table-driven: native leaves, never finer than native, the
budget a hard bound, refinement where the query scores (only the quadrants worth it), reasons recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely import unary_union

from rs_vlm_plugin.core.planning.dris import PlanConfig, QuadTree, plan_tiles
from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.locate.guided import GuideConfig, _next_round, guided_root_count, outline_parts, quadrant_estimates
from rs_vlm_plugin.core.encoding.tiles import EncodedTile


def noise(height: int = 256, width: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def assert_partition(plan) -> None:
    target = plan.extent.to_polygon()
    polygons = [t.extent.to_polygon() for t in plan.leaves]
    assert math.isclose(unary_union(polygons).area, target.area, rel_tol=1e-9)
    assert math.isclose(sum(p.area for p in polygons), target.area, rel_tol=1e-9)


# (extent, native GSD, tile size, expected native grid tiles)
NATIVE_GRIDS = {
    "2560-square": (Extent(0, 0, 2560, 2560), 1.0, 224, 12 * 12),  # the scene: 144 tiles at 224 px
    "exact-multiple": (Extent(0, 0, 1792, 1792), 1.0, 224, 8 * 8),
    "wide-utm": (Extent(500_000, 4_000_000, 505_000, 4_001_000), 0.5, 224, 45 * 9),
    "tiny": (Extent(0, 0, 100, 80), 1.0, 224, 1),
    "degrees": (Extent(10.0, 59.9, 10.05, 59.92), 1e-4, 64, 8 * 4),
    "tall": (Extent(0, 0, 300, 5000), 1.0, 128, 3 * 40),
}


@pytest.mark.parametrize("extent,native,tile,expected", NATIVE_GRIDS.values(), ids=NATIVE_GRIDS.keys())
def test_native_uniform_grid_ends_on_native_tiles(extent, native, tile, expected):
    plan = plan_tiles(extent, native, None, PlanConfig(uniform=True, native=True, tile_size=tile))
    assert plan.n_tiles == expected
    for leaf in plan.leaves:
        assert leaf.gsd == pytest.approx(native, rel=1e-9)  # read at exactly the raster's pixel size
        window = leaf.read_extent
        assert window.width == pytest.approx(tile * native) and window.height == pytest.approx(tile * native)
        assert leaf.extent.intersection(window) == leaf.extent  # the footprint lies in the square read
    assert_partition(plan)


@pytest.mark.parametrize("extent,native,tile,expected", NATIVE_GRIDS.values(), ids=NATIVE_GRIDS.keys())
@pytest.mark.parametrize("budget", [1, 5, 20, 100])
def test_native_dris_never_reads_finer_than_native_and_keeps_the_budget(extent, native, tile, expected, budget):
    plan = plan_tiles(extent, native, noise(), PlanConfig(native=True, tile_size=tile, max_tiles=budget))
    assert 1 <= plan.n_tiles <= budget
    assert all(t.gsd >= native * (1 - 1e-9) for t in plan.nodes)
    assert_partition(plan)


def test_old_quadtree_stops_coarser_than_native_the_native_one_does_not():
    extent = Extent(0, 0, 2560, 2560)
    old = plan_tiles(extent, 1.0, None, PlanConfig(uniform=True))
    new = plan_tiles(extent, 1.0, None, PlanConfig(uniform=True, native=True))
    assert old.summary()["finest_vs_native"] == pytest.approx(2560 / 8 / 224)  # 320 px read at 224: 1.43x
    assert new.summary()["finest_vs_native"] == pytest.approx(1.0)
    assert new.summary()["native_leaves"] == new.n_tiles == 144


def assert_nested(plan) -> None:
    """A guided plan: the roots partition the extent; every child lies in its parent and siblings do not overlap
    (a split tile may have fewer than four children: the rest of it stays covered by the tile)."""
    target = plan.extent.to_polygon()
    roots = [t.extent.to_polygon() for t in plan.roots]
    assert math.isclose(sum(p.area for p in roots), target.area, rel_tol=1e-9)
    assert math.isclose(unary_union(roots).area, target.area, rel_tol=1e-9)
    for tile in plan.nodes:
        kids = [c.extent.to_polygon() for c in plan.children_of(tile.key)]
        parent = tile.extent.to_polygon()
        assert all(parent.buffer(1e-9).contains(k) for k in kids)
        assert math.isclose(sum(k.area for k in kids), unary_union(kids).area if kids else 0.0, rel_tol=1e-9)


def grow(extent, native, budget, score_of, guide=GuideConfig(min_complexity=0.0)):
    """Run the guided rounds with a synthetic estimate of each quadrant (no model): ``score_of`` its footprint."""
    roots = guided_root_count(extent, native, 224, budget, guide, 12)
    tree = QuadTree(extent, native, noise(), PlanConfig(native=True, max_tiles=budget, native_roots=roots))
    encoded = list(tree.roots)
    frontier = list(tree.roots)
    while True:
        estimates = {(n.key, q): score_of(footprint) for n in frontier if tree.can_split(n)
                     for q, _, footprint in tree.child_cells(n)}
        children = _next_round(tree, estimates, budget - len(encoded), native, guide)
        if not children:
            break
        encoded += children
        frontier = children
    return tree.plan(), encoded


def near(point):
    """A query that scores 1 on the cells holding ``point``, 0.1 elsewhere."""
    def score(extent: Extent) -> float:
        return 1.0 if extent.xmin <= point[0] <= extent.xmax and extent.ymin <= point[1] <= extent.ymax else 0.1
    return score


def holds(tile, point) -> bool:
    return tile.extent.xmin <= point[0] <= tile.extent.xmax and tile.extent.ymin <= point[1] <= tile.extent.ymax


@pytest.mark.parametrize("budget", [9, 12, 20, 40, 97])
def test_guided_rounds_keep_the_budget_of_encoded_tiles(budget):
    plan, encoded = grow(Extent(0, 0, 4000, 4000), 1.0, budget, near((3100, 700)))
    assert len(encoded) <= budget
    assert len(plan.nodes) == len(encoded)  # the plan holds what was encoded, nothing more
    assert all(t.gsd >= 1.0 * (1 - 1e-9) for t in plan.nodes)
    assert_nested(plan)


def test_guided_rounds_refine_down_to_native_where_the_query_scores():
    target = (3100.0, 700.0)
    plan, encoded = grow(Extent(0, 0, 4000, 4000), 1.0, 40, near(target))
    native = [t for t in plan.nodes if t.gsd == pytest.approx(1.0)]
    holder = [t for t in native if holds(t, target)]
    assert [t.reason for t in holder] == ["query"]  # the cell with the object is read at native resolution
    chain = [t for t in plan.nodes if holds(t, target) and not t.is_leaf]
    assert chain and all(t.split_reason == "query" for t in chain)
    # elsewhere the query does not score: what was encoded there was chosen by the complexity tie-break
    assert all(t.reason == "complexity" for t in plan.nodes if t.depth > 0 and not holds(t, target))


def test_guided_rounds_encode_only_the_quadrants_worth_it():
    # a budget that cannot afford every quadrant of the tiles on the way: the best quadrants only
    target = (3100.0, 700.0)
    plan, encoded = grow(Extent(0, 0, 4000, 4000), 1.0, 12, near(target))
    split = [t for t in plan.nodes if not t.is_leaf]
    assert split and any(len(plan.children_of(t.key)) < 4 for t in split)
    assert any(t.gsd == pytest.approx(1.0) and holds(t, target) for t in plan.nodes)


def test_guided_rounds_spread_the_budget_over_the_levels():
    plan, encoded = grow(Extent(0, 0, 4000, 4000), 1.0, 97, lambda e: 0.5 + 0.4 * math.sin(e.xmin / 500.0))
    depths = {t.depth for t in encoded}
    assert depths == {0, 1, 2}  # roots two halvings above native (896 px), then 448 px, then native
    native = [t for t in encoded if t.gsd == pytest.approx(1.0)]
    roots = [t for t in encoded if t.depth == 0]
    assert len(encoded) == 97  # the whole budget is spent
    # the 448 px round left final_share of what remained after the roots to the native level
    assert len(native) >= math.floor(GuideConfig().final_share * (97 - len(roots)))


# (extent, native GSD, budget, expected roots): two halvings above native unless a third of the budget is less
ROOT_CASES = {
    "mosaic": (Extent(0, 0, 4624, 3076), 1.0, 88, 6 * 4),  # 896 px roots
    "small-budget": (Extent(0, 0, 4624, 3076), 1.0, 30, 3 * 2),  # 24 > 10: 1792 px roots
    "2560-default": (Extent(0, 0, 2560, 2560), 1.0, 48, 3 * 3),
    "tiny": (Extent(0, 0, 100, 80), 1.0, 48, 1),
}


@pytest.mark.parametrize("extent,native,budget,expected", ROOT_CASES.values(), ids=ROOT_CASES.keys())
def test_guided_roots_start_two_levels_above_native_within_the_budget(extent, native, budget, expected):
    count = guided_root_count(extent, native, 224, budget, GuideConfig(), 12)
    assert count == expected
    tree = QuadTree(extent, native, noise(), PlanConfig(native=True, max_tiles=budget, native_roots=count))
    assert len(tree.roots) == expected


def test_quadrant_estimates_read_the_parent_relevance_map_under_each_quadrant():
    tree = QuadTree(Extent(0, 0, 896, 896), 1.0, noise(), PlanConfig(native=True, max_tiles=48, native_roots=1))
    root = tree.roots[0]
    values = np.zeros((14, 14), np.float32)
    values[10, 12] = 0.9  # south-east quadrant (rows 7-13, columns 7-13)
    values[2, 3] = 0.4  # north-west
    got = quadrant_estimates(tree, root, root.window, np.zeros((13, 4), np.float32), None, values)
    assert got == {0: pytest.approx(0.4), 1: 0.0, 2: 0.0, 3: pytest.approx(0.9)}


def test_quadrant_estimates_without_text_score_the_region_tokens_of_the_quadrants():
    tree = QuadTree(Extent(0, 0, 896, 896), 1.0, noise(), PlanConfig(native=True, max_tiles=48, native_roots=1))
    root = tree.roots[0]
    regions = np.zeros((13, 4), np.float32)
    regions[2] = [1, 0, 0, 0]  # the south-west quadrant's token points at the query
    query = np.array([1.0, 0, 0, 0], np.float32)
    got = quadrant_estimates(tree, root, root.window, regions, lambda tokens: tokens @ query, None)
    assert max(got, key=got.get) == 2 and got[2] == pytest.approx(1.0)


def test_outline_parts_cover_what_the_children_do_not():
    tree = QuadTree(Extent(0, 0, 896, 896), 1.0, noise(), PlanConfig(native=True, max_tiles=48, native_roots=1))
    root = tree.roots[0]
    kids = tree.split(root, "query", {3: "query"})
    tiles = [EncodedTile(n.key, n.extent, n.depth, n.gsd, n.complexity, ("object",)) for n in [root, *kids]]
    parts = outline_parts(tree, tiles, {0: np.zeros(1), 1: np.zeros(1)})
    assert [row for row, _ in parts] == [0, 0, 0, 1]
    covered = unary_union([footprint.to_polygon() for _, footprint in parts])
    assert math.isclose(covered.area, root.extent.width * root.extent.height, rel_tol=1e-9)
    assert all(not footprint.to_polygon().intersection(kids[0].extent.to_polygon()).area > 1e-6
               for row, footprint in parts if row == 0)
