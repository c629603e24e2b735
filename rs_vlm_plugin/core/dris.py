"""DRIS, the Dynamic Resolution Input Strategy: which tiles to encode, at which resolution.

The extent is covered by a few near-square root cells, each the root of a quadtree. Every
tile is sent to the model at ``tile_size`` x ``tile_size`` pixels, so a tile at depth ``d``
sees the ground at ``2**-d`` of its root's ground sample distance (GSD). DRIS refines only
where the content is complex: it splits the leaf with the highest priority first, until the
budget of leaves is spent, nothing complex is left, or a split would read finer than the
raster's native resolution. The uniform grid (``uniform=True``) is the same quadtree split
everywhere down to native resolution, so both strategies can be compared tile for tile.

The DRIS budget is a hard upper bound for every raster shape: a long strip gets fewer, longer
root cells rather than one root per near-square cell, so that even the roots fit the budget.
The uniform grid has no budget; it is refused above ``max_uniform_tiles`` tiles instead.

Everything here is pure: the caller reads the coarse overview (``RasterSource.read``).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from .complexity import cell_complexity, complexity_map
from .errors import RsVlmError
from .geometry import Extent

_GSD_TOLERANCE = 1e-9  # relative slack so a child exactly at native resolution is allowed
MAX_UNIFORM_TILES = 20_000
"""Default limit of the uniform grid's tiles (about 1 GP of model input at 224 px)."""
MIN_ROOT_LIMIT = 3
"""Roots allowed along a raster's long side however small it is (aspect up to 3.5 keeps near-square cells)."""


@dataclass(frozen=True)
class PlanConfig:
    """Settings of the planner.

    Attributes:
        tile_size: Model input size in pixels (tiles are read at tile_size x tile_size).
        max_tiles: Budget: most leaves (tiles encoded).
        max_pixels: Alternative budget in encoded pixels (leaves * tile_size**2); the
            tighter of the two wins.
        complexity_threshold: Tiles less complex than this are never split.
        coarse_size: Long side in pixels of the overview read that complexity comes from.
        uniform: Split every tile down to native resolution (the baseline grid), ignoring
            complexity and budget.
        max_depth: Deepest quadtree level.
        max_uniform_tiles: The uniform grid is refused when it would have more tiles than
            this (None: no limit).
    """

    tile_size: int = 224
    max_tiles: int = 48
    max_pixels: int | None = None
    complexity_threshold: float = 0.12
    coarse_size: int = 768
    uniform: bool = False
    max_depth: int = 12
    max_uniform_tiles: int | None = MAX_UNIFORM_TILES

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise RsVlmError(f"The tile size must be at least 1 pixel, not {self.tile_size}; give a positive size.")
        if self.max_tiles < 1:
            raise RsVlmError(f"The tile budget must be at least 1 tile, not {self.max_tiles}; raise it.")
        one_tile = self.tile_size * self.tile_size
        if self.max_pixels is not None and self.max_pixels < one_tile:
            raise RsVlmError(
                f"The pixel budget of {self.max_pixels:,} pixels is less than one tile ({self.tile_size} x "
                f"{self.tile_size} = {one_tile:,} pixels); give at least {one_tile:,} pixels or leave it empty.")
        if self.max_uniform_tiles is not None and self.max_uniform_tiles < 1:
            raise RsVlmError(f"The uniform grid's tile limit must be at least 1, not {self.max_uniform_tiles}; "
                             "raise it or leave it empty.")
        if self.max_depth < 0:
            raise RsVlmError(f"The maximum depth must be 0 or more, not {self.max_depth}.")
        if self.coarse_size < 8:
            raise RsVlmError(f"The overview size must be at least 8 pixels, not {self.coarse_size}.")

    @property
    def leaf_budget(self) -> int:
        """The most leaves allowed by ``max_tiles`` and ``max_pixels`` together."""
        budget = self.max_tiles
        if self.max_pixels is not None:
            budget = min(budget, self.max_pixels // (self.tile_size * self.tile_size))
        return budget

    def coarse_shape(self, extent: Extent) -> tuple[int, int]:
        """(width, height) in pixels of the overview to read for ``extent``."""
        scale = self.coarse_size / max(extent.width, extent.height)
        return max(1, round(extent.width * scale)), max(1, round(extent.height * scale))


@dataclass(frozen=True)
class Tile:
    """One node of the plan's quadtree.

    Attributes:
        key: Path in the quadtree: the root's index, then one digit per level
            (0 north-west, 1 north-east, 2 south-west, 3 south-east), e.g. "0.2.1".
        extent: The tile's footprint in map units.
        depth: 0 for roots.
        gsd: Map units per model pixel, ``max(width, height) / tile_size``.
        complexity: Mean content complexity over the tile, in [0, 1] (0 without an overview).
        is_leaf: True for tiles that are encoded (not split further).
    """

    key: str
    extent: Extent
    depth: int
    gsd: float
    complexity: float
    is_leaf: bool

    @property
    def parent_key(self) -> str | None:
        """Key of the parent, None for a root."""
        return self.key.rsplit(".", 1)[0] if "." in self.key else None


@dataclass
class TilePlan:
    """The planner's output: every node of the quadtree, leaves marked.

    Attributes:
        extent: The planned extent.
        native_gsd: The raster's pixel size in map units.
        config: The settings used.
        nodes: Every node (roots, internal, leaves), by depth then key.
    """

    extent: Extent
    native_gsd: float
    config: PlanConfig
    nodes: list[Tile]

    @property
    def leaves(self) -> list[Tile]:
        """The tiles to encode."""
        return [t for t in self.nodes if t.is_leaf]

    @property
    def roots(self) -> list[Tile]:
        """The depth-0 cells."""
        return self.nodes_at_depth(0)

    @property
    def n_tiles(self) -> int:
        """Number of leaves."""
        return sum(t.is_leaf for t in self.nodes)

    @property
    def pixels_encoded(self) -> int:
        """Pixels the model sees: leaves * tile_size**2."""
        return self.n_tiles * self.config.tile_size ** 2

    @property
    def max_depth(self) -> int:
        """Depth of the deepest node."""
        return max(t.depth for t in self.nodes)

    def nodes_at_depth(self, depth: int) -> list[Tile]:
        """All nodes (leaf or not) at ``depth``."""
        return [t for t in self.nodes if t.depth == depth]

    def children_of(self, key: str) -> list[Tile]:
        """The four children of a node in quadrant order (none for a leaf)."""
        return sorted((t for t in self.nodes if t.parent_key == key), key=lambda t: _order(t.key))

    def summary(self) -> dict:
        """Numbers for logs and reports: tiles, pixels, leaves per depth, GSD range."""
        leaves = self.leaves
        return {
            "tiles": len(leaves),
            "pixels": self.pixels_encoded,
            "nodes": len(self.nodes),
            "depth_histogram": dict(sorted(Counter(t.depth for t in leaves).items())),
            "min_gsd": min(t.gsd for t in leaves),
            "max_gsd": max(t.gsd for t in leaves),
            "native_gsd": self.native_gsd,
            "uniform": self.config.uniform,
        }


def plan_tiles(extent: Extent, native_gsd: float, coarse: np.ndarray | None,
               config: PlanConfig = PlanConfig()) -> TilePlan:
    """Plan which tiles to encode over ``extent``.

    Each split of a leaf replaces it by its four quadrants (3 more leaves). DRIS splits
    best-first, by ``complexity * sqrt(area / extent area)``: complexity alone would drill
    into one busy spot down to native resolution before the rest of a busy area got a second
    look; area alone is the uniform grid. The square root is in between: children (a quarter
    of the area, half the weight) go before tiles of their parent's size only when they are
    more than twice as complex. Ties go to the smaller key.

    Args:
        extent: The area to cover, in map units.
        native_gsd: The raster's pixel size in map units; no tile reads finer than this.
        coarse: The whole extent as uint8 ``(H, W, 3)`` at about ``config.coarse_size`` on
            its long side (see :meth:`PlanConfig.coarse_shape`). Only the uniform grid may do
            without it.
        config: Budget and thresholds.

    Returns:
        The plan (deterministic for the same inputs).
    """
    if not native_gsd > 0:
        raise ValueError(f"native_gsd must be positive, got {native_gsd}.")
    if coarse is None and not config.uniform:
        raise ValueError("DRIS needs the coarse overview of the extent; only the uniform grid works without it.")
    cmap = complexity_map(coarse) if coarse is not None else None

    def make(key: str, cell: Extent, depth: int) -> _Node:
        score = cell_complexity(cmap, _fraction(cell, extent)) if cmap is not None else 0.0
        return _Node(key, _order(key), cell, depth, max(cell.width, cell.height) / config.tile_size, score)

    long_side_px = max(extent.width, extent.height) / native_gsd
    root_limit = max(MIN_ROOT_LIMIT, math.ceil(long_side_px / config.tile_size))
    if not config.uniform:
        root_limit = min(root_limit, config.leaf_budget)
    roots = [make(str(i), cell, 0) for i, cell in enumerate(_root_cells(extent, max(1, root_limit)))]
    min_gsd = native_gsd * (1 - _GSD_TOLERANCE)

    def can_split(node: _Node) -> bool:
        return node.depth < config.max_depth and node.gsd / 2 >= min_gsd

    def split(node: _Node) -> list[_Node]:
        node.children = [make(f"{node.key}.{q}", cell, node.depth + 1) for q, cell in enumerate(node.extent.quadrants())]
        return node.children

    if config.uniform:
        _check_uniform_size(roots, min_gsd, config)
        todo = list(roots)
        while todo:
            node = todo.pop()
            if can_split(node):
                todo.extend(split(node))
    else:
        total_area = extent.width * extent.height
        leaves, budget = len(roots), config.leaf_budget
        heap: list[tuple[float, tuple[int, ...], _Node]] = []

        def push(node: _Node) -> None:
            if can_split(node) and node.complexity >= config.complexity_threshold:
                area_fraction = node.extent.width * node.extent.height / total_area
                heapq.heappush(heap, (-node.complexity * area_fraction ** 0.5, node.order, node))

        for root in roots:
            push(root)
        while heap and leaves + 3 <= budget:
            _, _, node = heapq.heappop(heap)
            for child in split(node):
                push(child)
            leaves += 3
    return TilePlan(extent, native_gsd, config, _flatten(roots))


@dataclass
class _Node:
    key: str
    order: tuple[int, ...]
    extent: Extent
    depth: int
    gsd: float
    complexity: float
    children: list["_Node"] | None = None


def _order(key: str) -> tuple[int, ...]:
    """Sort key of a quadtree key (numeric, so root "10" comes after root "9")."""
    return tuple(int(part) for part in key.split("."))


def _check_uniform_size(roots: list[_Node], min_gsd: float, config: PlanConfig) -> None:
    """Refuse a uniform grid with more than ``config.max_uniform_tiles`` tiles, before any split."""
    if config.max_uniform_tiles is None:
        return
    total = 0
    for root in roots:
        depth, gsd = 0, root.gsd
        while depth < config.max_depth and gsd / 2 >= min_gsd:
            depth, gsd = depth + 1, gsd / 2
        total += 4 ** depth
    if total > config.max_uniform_tiles:
        raise RsVlmError(
            f"The uniform grid of this extent would have {total:,} tiles, more than the limit of "
            f"{config.max_uniform_tiles:,}; use DRIS (leave out --uniform) or a smaller extent, or raise the "
            f"limit (--max-uniform-tiles {total} on the command line, PlanConfig.max_uniform_tiles in code).")


def _root_cells(extent: Extent, limit: int) -> list[Extent]:
    """Equal cells tiling ``extent``, row by row from the north-west: near-square (aspect at most
    1.5) when at most ``limit`` of them do it, otherwise ``limit`` longer cells."""
    w, h = extent.width, extent.height
    nx, ny = min(limit, max(1, round(w / h))), min(limit, max(1, round(h / w)))
    cells = []
    for row in range(ny):
        top = extent.ymax - h * row / ny
        bottom = extent.ymin if row == ny - 1 else extent.ymax - h * (row + 1) / ny
        for col in range(nx):
            left = extent.xmin + w * col / nx
            right = extent.xmax if col == nx - 1 else extent.xmin + w * (col + 1) / nx
            cells.append(Extent(left, bottom, right, top))
    return cells


def _fraction(cell: Extent, extent: Extent) -> tuple[float, float, float, float]:
    """``cell`` as (left, top, right, bottom) fractions of ``extent`` from its top-left corner."""
    return (
        (cell.xmin - extent.xmin) / extent.width,
        (extent.ymax - cell.ymax) / extent.height,
        (cell.xmax - extent.xmin) / extent.width,
        (extent.ymax - cell.ymin) / extent.height,
    )


def _flatten(roots: list[_Node]) -> list[Tile]:
    nodes: list[_Node] = []
    todo = list(roots)
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.children or ())
    nodes.sort(key=lambda n: (n.depth, n.order))
    return [Tile(n.key, n.extent, n.depth, n.gsd, n.complexity, n.children is None) for n in nodes]
