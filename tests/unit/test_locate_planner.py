"""Native-grid and query-guided planning, table-driven: native leaves, never finer than native, the
budget a hard bound, refinement where the query scores, reasons recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely import unary_union

from rs_vlm_plugin.core.dris import PlanConfig, QuadTree, plan_tiles, refinement_order
from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.locate.guided import GuideConfig, _next_round


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


# (query scores by key, complexity of every cell, prior weight, expected order of keys, reasons)
ORDER_CASES = {
    "query-wins": ({"a": 0.9, "b": 0.1, "c": 0.5}, 0.5, 0.25, ["a", "c", "b"], ["query", "query", "complexity"]),
    "no-prior": ({"a": 0.2, "b": 0.3}, 0.9, 0.0, ["b", "a"], ["query", "query"]),
    "ties-by-key": ({"b": 0.4, "a": 0.4}, 0.1, 0.25, ["a", "b"], ["query", "query"]),
}


class _Cell:
    def __init__(self, key: str, complexity: float) -> None:
        self.key, self.complexity = key, complexity


@pytest.mark.parametrize("scores,complexity,prior,order,reasons", ORDER_CASES.values(), ids=ORDER_CASES.keys())
def test_refinement_order_follows_the_query_scores(scores, complexity, prior, order, reasons):
    keys = {"a": "0", "b": "1", "c": "2"}
    cells = [_Cell(keys[k], complexity) for k in scores]
    ranked = refinement_order(cells, {keys[k]: v for k, v in scores.items()}, prior)
    back = {v: k for k, v in keys.items()}
    assert [back[key] for key, _, _ in ranked] == order
    assert [reason for _, reason, _ in ranked] == reasons


def test_refinement_order_leaves_out_flat_and_unscored_cells():
    cells = [_Cell("0", 0.0), _Cell("1", 0.5), _Cell("2", 0.5)]
    ranked = refinement_order(cells, {"0": 0.9, "1": 0.1}, 0.25, min_complexity=0.02)
    assert [key for key, _, _ in ranked] == ["1"]


def test_complexity_prior_decides_between_equal_query_scores():
    cells = [_Cell("0", 0.1), _Cell("1", 0.8)]
    ranked = refinement_order(cells, {"0": 0.5, "1": 0.5}, 0.25)
    assert ranked[0][0] == "1"


def grow(extent, native, budget, score_of, guide=GuideConfig(min_complexity=0.0)):
    """Run the guided rounds with a synthetic score of each tile (no model): scores follow ``score_of``."""
    tree = QuadTree(extent, native, noise(), PlanConfig(native=True, max_tiles=budget))
    encoded = list(tree.roots)
    scores = {n.key: score_of(n.extent) for n in encoded}
    while True:
        children = _next_round(tree, scores, budget - len(encoded), native, guide)
        if not children:
            break
        encoded += children
        scores.update((c.key, score_of(c.extent)) for c in children)
    return tree.plan(), encoded


def near(point):
    """A query that scores 1 on the tiles holding ``point``, 0.1 elsewhere."""
    def score(extent: Extent) -> float:
        return 1.0 if extent.xmin <= point[0] <= extent.xmax and extent.ymin <= point[1] <= extent.ymax else 0.1
    return score


@pytest.mark.parametrize("budget", [9, 12, 20, 40, 97])
def test_guided_rounds_keep_the_budget_of_encoded_tiles(budget):
    plan, encoded = grow(Extent(0, 0, 4000, 4000), 1.0, budget, near((3100, 700)))
    assert len(encoded) <= budget
    assert all(t.gsd >= 1.0 * (1 - 1e-9) for t in plan.nodes)
    assert_partition(plan)


def test_guided_rounds_refine_down_to_native_where_the_query_scores():
    target = (3100.0, 700.0)
    plan, encoded = grow(Extent(0, 0, 4000, 4000), 1.0, 60, near(target))
    native = [t for t in plan.leaves if t.gsd == pytest.approx(1.0)]
    assert native, plan.summary()
    assert any(t.extent.xmin <= target[0] <= t.extent.xmax and t.extent.ymin <= target[1] <= t.extent.ymax
               for t in native)  # the cell with the object is read at native resolution
    # every split on the way was made for the query, and recorded
    split = [t for t in plan.nodes if not t.is_leaf]
    assert split and all(t.split_reason in ("query", "complexity") for t in split)
    chain = [t for t in split if t.extent.xmin <= target[0] <= t.extent.xmax and t.extent.ymin <= target[1] <= t.extent.ymax]
    assert all(t.split_reason == "query" for t in chain)
    holder = [t for t in native if t.extent.xmin <= target[0] <= t.extent.xmax
              and t.extent.ymin <= target[1] <= t.extent.ymax]
    assert [t.reason for t in holder] == ["query"]
    # far from the target, what went down to native did so for the complexity prior (budget left over)
    far = [t for t in native if math.hypot(t.extent.center[0] - target[0], t.extent.center[1] - target[1]) > 2000]
    assert all(t.reason == "complexity" for t in far)
    assert len(far) < len(native) - len(far)


def test_guided_rounds_spread_the_budget_over_the_levels():
    plan, encoded = grow(Extent(0, 0, 4000, 4000), 1.0, 97, lambda e: 0.5 + 0.4 * math.sin(e.xmin / 500.0))
    depths = {t.depth for t in encoded}
    assert max(depths) == 3  # 4000 px, roots of 1792: three halvings to native
    assert plan.summary()["native_leaves"] > 0
