"""Relevance maps on the map -> outlines: thresholded cells, merged into polygons, boxes for compact blobs.

Each tile's map is a ``G x G`` grid over the square the model read (its window); only the cells
inside the tile's footprint count, clipped to it, so maps of neighbouring tiles meet without
overlapping. Cells at least as relevant as the threshold are merged into connected polygons
(cells that share an edge; cells that only touch at a corner stay apart); a polygon of few cells that fills at least half its
bounding box is a compact blob and is drawn as that box. When the query names an object class of
known size, blobs are instead split at their local maxima into one box of that size per object
(:mod:`.peaks`, :mod:`.sizes`). Every outline keeps the best and the mean relevance of its cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..geometry import Extent
from .peaks import split_blob

MAX_SPLIT_CELLS = 2000
"""Blobs of more relevant cells than this are not split into objects (see :func:`vectorise`)."""


@dataclass(frozen=True)
class CellGrid:
    """One tile's relevance map placed on the map.

    Attributes:
        window: The square the map covers (what the model read), in map units.
        footprint: The part of it that the tile reports (cells outside are dropped, cells
            across its border clipped).
        values: (G, G) relevance in [0, 1], row 0 to the north.
        depth: The tile's quadtree depth.
        gsd: The tile's ground sample distance in map units per model pixel.
    """

    window: Extent
    footprint: Extent
    values: np.ndarray
    depth: int = 0
    gsd: float = 0.0


@dataclass
class Outline:
    """A connected group of relevant cells.

    Attributes:
        geometry: A shapely Polygon: the merged cells, or the blob's bounding box for ``shape == "box"``.
        score: The best relevance of its cells.
        mean_score: The mean relevance of its cells.
        cells: How many cells it holds.
        shape: "box" or "polygon".
        depth: Depth of the finest tile among its cells.
        gsd: Ground sample distance of that tile (map units per model pixel).
    """

    geometry: object
    score: float
    mean_score: float
    cells: int
    shape: str
    depth: int
    gsd: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the outline."""
        return tuple(self.geometry.bounds)


def relevant_cells(grid: CellGrid, threshold: float) -> list[tuple[tuple[float, float, float, float], float]]:
    """The cells of a map at least as relevant as ``threshold``: ((xmin, ymin, xmax, ymax), value), clipped
    to the footprint (cells wholly outside it are left out)."""
    values = np.asarray(grid.values)
    rows, cols = values.shape
    w, f = grid.window, grid.footprint
    cw, ch = w.width / cols, w.height / rows
    out = []
    for r, c in zip(*np.nonzero(values >= threshold)):
        x0, x1 = w.xmin + c * cw, w.xmin + (c + 1) * cw
        y1, y0 = w.ymax - r * ch, w.ymax - (r + 1) * ch
        x0, x1, y0, y1 = max(x0, f.xmin), min(x1, f.xmax), max(y0, f.ymin), min(y1, f.ymax)
        if x1 > x0 and y1 > y0:
            out.append(((x0, y0, x1, y1), float(values[r, c])))
    return out


def vectorise(grids: Sequence[CellGrid], threshold: float, max_box_cells: int = 64, min_box_fill: float = 0.5,
              min_cells: int = 1, size: tuple[float, float] | None = None,
              max_split_cells: int = MAX_SPLIT_CELLS) -> list[Outline]:
    """Outlines of the relevant cells of several tiles' maps, best first.

    Args:
        grids: The tiles' maps (footprints should not overlap, as the leaves of a plan).
        threshold: Cells at least this relevant are kept.
        max_box_cells: Blobs of at most this many cells may become boxes ...
        min_box_fill: ... when their cells fill at least this share of the bounding box.
        min_cells: Blobs of fewer cells are dropped.
        size: (width, height) in map units of the object class the query names (see
            :mod:`.sizes`): every blob of at most ``max_split_cells`` cells is then split at its
            local maxima into boxes of that size (:func:`.peaks.split_blob`), one per object.
            None: a blob is one outline, a box when it is compact.
        max_split_cells: Larger blobs stay one polygon (a field, a shoreline: no objects to count).

    Returns:
        Outlines sorted by best score, then mean score, then size (descending).
    """
    from shapely.geometry import Point, box
    from shapely.ops import unary_union
    from shapely.strtree import STRtree

    cells: list[tuple[tuple[float, float, float, float], float, int, float]] = []
    for grid in grids:
        cells += [(bounds, value, grid.depth, grid.gsd) for bounds, value in relevant_cells(grid, threshold)]
    if not cells:
        return []
    # Snap to a fine grid so that cell edges computed in different tiles meet exactly.
    quantum = 1e-6 * min(b[2] - b[0] for b, *_ in cells)

    def snap(v: float) -> float:
        return round(v / quantum) * quantum

    boxes = [box(*(snap(v) for v in bounds)) for bounds, *_ in cells]
    merged = unary_union(boxes)
    parts = list(getattr(merged, "geoms", [merged]))
    centres = [Point((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b, *_ in cells]
    tree = STRtree(centres)
    outlines = []
    for part in parts:
        members = [int(i) for i in _query(tree, part, centres)]
        if len(members) < min_cells:
            continue
        values = [cells[i][1] for i in members]
        depth = max(cells[i][2] for i in members)
        gsd = min(cells[i][3] for i in members)
        if size is not None and len(members) <= max_split_cells:
            for peak in split_blob(np.array([cells[i][0] for i in members]), np.array(values), size):
                outlines.append(Outline(box(*peak.bounds), peak.score, peak.mean_score, peak.cells, "box", depth, gsd))
            continue
        envelope = box(*part.bounds)
        compact = len(members) <= max_box_cells and part.area >= min_box_fill * envelope.area
        outlines.append(Outline(envelope if compact else part, max(values), float(np.mean(values)), len(members),
                                "box" if compact else "polygon", depth, gsd))
    outlines.sort(key=lambda o: (-o.score, -o.mean_score, -o.cells, o.bounds))
    return outlines


def _query(tree, part, centres) -> list[int]:
    """Indices of the centres inside ``part`` (shapely 2 returns indices, 1.8 the geometries)."""
    found = tree.query(part, predicate="contains")
    if len(found) and not isinstance(found[0], (int, np.integer)):
        ids = {id(g): k for k, g in enumerate(centres)}
        return [ids[id(g)] for g in found]
    return [int(i) for i in found]
