"""DRIS, the Dynamic Resolution Input Strategy: which tiles to encode, at which resolution.

The extent is covered by a few near-square root cells, each the root of a quadtree. Every
tile is sent to the model at ``tile_size`` x ``tile_size`` pixels, so a tile at depth ``d``
sees the ground at ``2**-d`` of its root's ground sample distance (GSD). DRIS refines only
where the content is complex: it splits the leaf with the highest priority first, until the
budget of leaves is spent, nothing complex is left, or a split would read finer than the
raster's native resolution. The uniform grid (``uniform=True``) is the same quadtree split
everywhere down to native resolution, so both strategies can be compared tile for tile.

With ``native=True`` the roots are sized to the tile (``tile_size * 2**D`` native pixels a
side), so the deepest level is read at exactly the raster's pixel size rather than up to twice
coarser; the query-guided planner (:mod:`rs_vlm_plugin.core.locate.guided`) grows the same
:class:`QuadTree` level by level from what the model saw, and every node records why it was
split (``"complexity"``, ``"query"`` or ``"uniform"``).

The DRIS budget is a hard upper bound for every raster shape: a long strip gets fewer, longer
root cells rather than one root per near-square cell, so that even the roots fit the budget.
The uniform grid has no budget; it is refused above ``max_uniform_tiles`` tiles instead.

Everything here is pure: the caller reads the coarse overview (``RasterSource.read``).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .complexity import cell_complexity, complexity_map
from ..errors import RsVlmError
from ..geometry import Extent

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
        coarse_size: Long side in pixels of the overview read that complexity comes from
            (512: its complexity map and the quadtree take 0.1 s; 768 took 0.2-0.4 s, 10-15 %
            of a 2560 px caption. The two small sample scenes get the same plans; the large
            NEON scene the same number of leaves, 64 % of them the same tiles).
        uniform: Split every tile down to native resolution (the baseline grid), ignoring
            complexity and budget.
        max_depth: Deepest quadtree level.
        max_uniform_tiles: The uniform grid is refused when it would have more tiles than
            this (None: no limit).
        native: Root cells sized so that the quadtree ends on tiles read at exactly the
            raster's native pixel size (``tile_size * 2**D`` native pixels a side, see
            :func:`native_root_cells`); False: near-square roots dividing the extent evenly,
            whose finest tiles may be up to twice coarser than native.
        native_roots: With ``native``, the most root cells (the coarsest level encoded first).
    """

    tile_size: int = 224
    max_tiles: int = 48
    max_pixels: int | None = None
    complexity_threshold: float = 0.12
    coarse_size: int = 512
    uniform: bool = False
    max_depth: int = 12
    max_uniform_tiles: int | None = MAX_UNIFORM_TILES
    native: bool = False
    native_roots: int = 9

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
        if self.native_roots < 1:
            raise RsVlmError(f"The number of root cells must be at least 1, not {self.native_roots}.")
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
        window: The square the model reads for this tile; it holds the footprint ``extent``. They
            differ only for native-grid cells at the extent's east and south edges (see
            :func:`native_root_cells`): the cell's square is moved back inside the extent, so the
            model reads real pixels at native resolution, overlapping the neighbour. None: the footprint.
        reason: Why the tile exists at its depth: ``"root"``, or why its parent was split
            (``"complexity"``, ``"query"`` or ``"uniform"``).
        split_reason: Why the tile was split (the same words); empty for a leaf.
    """

    key: str
    extent: Extent
    depth: int
    gsd: float
    complexity: float
    is_leaf: bool
    window: Extent | None = None
    reason: str = ""
    split_reason: str = ""

    @property
    def read_extent(self) -> Extent:
        """What the model reads: the square window (the footprint when there is none)."""
        return self.window or self.extent

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
        scores: Query score by key of the tiles a query-guided plan encoded (empty otherwise).
    """

    extent: Extent
    native_gsd: float
    config: PlanConfig
    nodes: list[Tile]
    scores: dict[str, float] = field(default_factory=dict)

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
            "finest_vs_native": min(t.gsd for t in leaves) / self.native_gsd,
            "native_leaves": sum(t.gsd <= self.native_gsd * (1 + 1e-6) for t in leaves),
            "uniform": self.config.uniform,
            "native": self.config.native,
            "reasons": dict(sorted(Counter(t.split_reason for t in self.nodes if t.split_reason).items())),
        }


def plan_tiles(extent: Extent, native_gsd: float, coarse: np.ndarray | None,
               config: PlanConfig = PlanConfig()) -> TilePlan:
    """Plan which tiles to encode over ``extent``, by content complexity (or the uniform grid).

    Each split of a leaf replaces it by its quadrants (3 more leaves; fewer where a native-grid
    quadrant lies outside the extent). DRIS splits best-first, by
    ``complexity * sqrt(area / extent area)``: complexity alone would drill into one busy spot
    down to native resolution before the rest of a busy area got a second look; area alone is
    the uniform grid. The square root is in between: children (a quarter of the area, half the
    weight) go before tiles of their parent's size only when they are more than twice as
    complex. Ties go to the smaller key.

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
    tree = QuadTree(extent, native_gsd, coarse, config)
    if config.uniform:
        tree.check_uniform_size()
        todo = list(tree.roots)
        while todo:
            node = todo.pop()
            if tree.can_split(node):
                todo.extend(tree.split(node, "uniform"))
        return tree.plan()
    total_area = extent.width * extent.height
    leaves, budget = len(tree.roots), config.leaf_budget
    heap: list[tuple[float, tuple[int, ...], _Node]] = []

    def push(node: _Node) -> None:
        if tree.can_split(node) and node.complexity >= config.complexity_threshold:
            area_fraction = node.extent.width * node.extent.height / total_area
            heapq.heappush(heap, (-node.complexity * area_fraction ** 0.5, node.order, node))

    for root in tree.roots:
        push(root)
    while heap:
        _, _, node = heapq.heappop(heap)
        added = len(tree.child_cells(node)) - 1
        if leaves + added > budget:
            if config.native:
                continue  # a split with fewer children (at the extent's edge) may still fit
            break
        for child in tree.split(node, "complexity"):
            push(child)
        leaves += added
    return tree.plan()


class QuadTree:
    """The planner's quadtree while it grows: roots, splits, and the plan it makes.

    The complexity planner (:func:`plan_tiles`) and the query-guided one
    (:mod:`rs_vlm_plugin.core.locate.guided`) both grow one of these: the first from the coarse
    overview alone, the second level by level from what the model saw in the tiles encoded so far.

    Args:
        extent: The area to cover, in map units.
        native_gsd: The raster's pixel size in map units.
        coarse: The overview of the extent (complexity comes from it), or None (complexity 0).
        config: The planner's settings (``native`` chooses the root cells, see :class:`PlanConfig`).
    """

    def __init__(self, extent: Extent, native_gsd: float, coarse: np.ndarray | None, config: PlanConfig) -> None:
        if not native_gsd > 0:
            raise ValueError(f"native_gsd must be positive, got {native_gsd}.")
        if coarse is None and not config.uniform:
            raise ValueError("DRIS needs the coarse overview of the extent; only the uniform grid works without it.")
        self.extent, self.native_gsd, self.config = extent, native_gsd, config
        self.cmap = complexity_map(coarse) if coarse is not None else None
        self.min_gsd = native_gsd * (1 - _GSD_TOLERANCE)
        if config.native:
            cells = native_root_cells(extent, native_gsd, config)
        else:
            long_side_px = max(extent.width, extent.height) / native_gsd
            root_limit = max(MIN_ROOT_LIMIT, math.ceil(long_side_px / config.tile_size))
            if not config.uniform:
                root_limit = min(root_limit, config.leaf_budget)
            cells = [(cell, cell) for cell in _root_cells(extent, max(1, root_limit))]
        self.roots = [self._make(str(i), window, footprint, 0, "root") for i, (window, footprint) in enumerate(cells)]
        self.nodes: dict[str, _Node] = {n.key: n for n in self.roots}

    def _make(self, key: str, cell: Extent, footprint: Extent, depth: int, reason: str) -> "_Node":
        score = self.footprint_complexity(footprint)
        gsd = max(cell.width, cell.height) / self.config.tile_size
        return _Node(key, _order(key), footprint, depth, gsd, score, window=_inside(cell, self.extent), reason=reason,
                     cell=cell)

    def can_split(self, node: "_Node") -> bool:
        """Whether a node may be split: above the deepest level, and its children no finer than native."""
        return node.children is None and node.depth < self.config.max_depth and node.gsd / 2 >= self.min_gsd

    def child_cells(self, node: "_Node") -> list[tuple[int, Extent, Extent]]:
        """The children a split would make: (quadrant, window read, footprint in the extent).

        Quadrants of the node's window that lie outside the extent are left out (native roots
        may reach past its east and south edges)."""
        out = []
        cell = node.cell or node.window
        for quadrant, window in enumerate(cell.quadrants()):
            footprint = window if cell == node.extent else window.intersection(self.extent)
            if footprint is not None:
                out.append((quadrant, window, footprint))
        return out

    def split(self, node: "_Node", reason: str, quadrants: dict[int, str] | None = None) -> list["_Node"]:
        """Split a leaf into its children, recording why (``"complexity"``, ``"query"`` or ``"uniform"``).

        Args:
            quadrants: Make only these children, each with its own reason (the query-guided planner
                encodes only the quadrants worth a closer look; the rest of the node stays covered
                by the node itself). None: every child, with ``reason``.
        """
        node.split_reason = reason
        node.children = [self._make(f"{node.key}.{q}", window, footprint, node.depth + 1,
                                    reason if quadrants is None else quadrants[q])
                         for q, window, footprint in self.child_cells(node) if quadrants is None or q in quadrants]
        self.nodes.update((c.key, c) for c in node.children)
        return node.children

    def footprint_complexity(self, footprint: Extent) -> float:
        """Mean complexity of the overview over part of the extent (0 without an overview)."""
        return cell_complexity(self.cmap, _fraction(footprint, self.extent)) if self.cmap is not None else 0.0

    def check_uniform_size(self) -> None:
        """Refuse a uniform grid with more than ``config.max_uniform_tiles`` tiles, before any split."""
        config = self.config
        if config.max_uniform_tiles is None:
            return
        total = 0
        for root in self.roots:
            depth, gsd = 0, root.gsd
            while depth < config.max_depth and gsd / 2 >= self.min_gsd:
                depth, gsd = depth + 1, gsd / 2
            if config.native:
                side = root.window.width / 2 ** depth
                total += math.ceil(root.extent.width / side - 1e-9) * math.ceil(root.extent.height / side - 1e-9)
            else:
                total += 4 ** depth
        if total > config.max_uniform_tiles:
            raise RsVlmError(
                f"The uniform grid of this extent would have {total:,} tiles, more than the limit of "
                f"{config.max_uniform_tiles:,}; use DRIS (leave out --uniform) or a smaller extent, or raise the "
                f"limit (--max-uniform-tiles {total} on the command line, PlanConfig.max_uniform_tiles in code).")

    def plan(self) -> TilePlan:
        """The plan of the tree as it is now."""
        return TilePlan(self.extent, self.native_gsd, self.config, _flatten(self.roots))


def native_grid_count(extent: Extent, native_gsd: float, tile_size: int, depth: int) -> int:
    """How many cells of ``tile_size * 2**depth`` native pixels a side cover ``extent`` from its north-west corner."""
    side = tile_size * native_gsd * 2 ** depth
    return math.ceil(extent.width / side - 1e-9) * math.ceil(extent.height / side - 1e-9)


def native_root_cells(extent: Extent, native_gsd: float, config: PlanConfig) -> list[tuple[Extent, Extent]]:
    """Square root cells whose quadtree reaches exactly the native resolution: (window, footprint).

    A root is ``tile_size * 2**D`` native pixels on a side, so its depth-``D`` descendants are
    read at the raster's own pixel size. The roots tile the plane from the extent's north-west
    corner; those that reach past its east or south edge report only their part of the extent
    (their footprint), and every tile's square is read moved back inside the extent (``_inside``). ``D`` is the smallest depth that needs at most ``config.native_roots`` roots (and
    never more than the budget for DRIS).
    """
    limit = config.native_roots if config.uniform else min(config.native_roots, config.leaf_budget)
    depth = 0
    while native_grid_count(extent, native_gsd, config.tile_size, depth) > max(1, limit) and depth < config.max_depth:
        depth += 1
    side = config.tile_size * native_gsd * 2 ** depth
    nx, ny = math.ceil(extent.width / side - 1e-9), math.ceil(extent.height / side - 1e-9)
    cells = []
    for row in range(ny):
        top = extent.ymax - side * row
        for col in range(nx):
            left = extent.xmin + side * col
            window = Extent(left, top - side, left + side, top)
            footprint = window.intersection(extent)
            if footprint is not None:
                cells.append((window, footprint))
    return cells


@dataclass
class _Node:
    key: str
    order: tuple[int, ...]
    extent: Extent
    depth: int
    gsd: float
    complexity: float
    children: list["_Node"] | None = None
    window: Extent | None = None
    reason: str = ""
    split_reason: str = ""
    cell: Extent | None = None  # the node's square of the native grid (its window before it is moved inside)


def _inside(cell: Extent, extent: Extent) -> Extent:
    """``cell`` moved west and north, as far as needed, to lie inside ``extent`` (where it fits), so that a
    native-grid tile at the east or south edge reads real pixels of the extent rather than beyond it."""
    if cell.xmax <= extent.xmax + 1e-9 * cell.width and cell.ymin >= extent.ymin - 1e-9 * cell.height:
        return cell
    dx = max(extent.xmin - cell.xmin, min(0.0, extent.xmax - cell.xmax))
    dy = min(extent.ymax - cell.ymax, max(0.0, extent.ymin - cell.ymin))
    return Extent(cell.xmin + dx, cell.ymin + dy, cell.xmax + dx, cell.ymax + dy)


def _order(key: str) -> tuple[int, ...]:
    """Sort key of a quadtree key (numeric, so root "10" comes after root "9")."""
    return tuple(int(part) for part in key.split("."))


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
    return [Tile(n.key, n.extent, n.depth, n.gsd, n.complexity, n.children is None, n.window or n.extent, n.reason,
                 n.split_reason) for n in nodes]
