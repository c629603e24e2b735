"""Outlines of a query in an encoding: the finest tiles' relevance maps, vectorised, as records."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..records import OutlineRecord
from .relevance import LocateConfig, relevance_maps
from .sizes import class_size
from .vectorise import CellGrid, Outline, vectorise

if TYPE_CHECKING:
    from ..bundle import ModelBundle
    from ..encoding.tiles import Encoding


def find_outlines(encoding: "Encoding", bundle: "ModelBundle", text: str, metres_per_unit: float,
                  source_name: str = "", config: LocateConfig | None = None) -> list[OutlineRecord]:
    """Outlines of what ``text`` names, from the object tokens of the encoding's finest tiles.

    In a guided encoding (:class:`~.guided.GuidedEncoding`) each part of the extent is outlined
    by the finest tile encoded over it (native tiles, and coarser ones over the quadrants that
    were not read closer); otherwise by the plan's leaves (they cover the extent once).

    Args:
        encoding: Tiles and tiers of a job (with object tokens for its finest tiles).
        text: The query, or a question's subject.
        metres_per_unit: Metres per map unit of the raster's CRS (for areas).
        source_name: Name of the raster.
        config: Threshold and shapes (default: :meth:`LocateConfig.for_bundle`).

    Returns:
        Outline records, best first, ranked from 1.
    """
    config = config or LocateConfig.for_bundle(bundle)
    tokens = finest_objects(encoding)
    if not tokens:
        return []
    rows = sorted(tokens)
    maps = relevance_maps(np.stack([tokens[i] for i in rows]), bundle, text, config)
    by_row = dict(zip(rows, maps))
    grids = [CellGrid(encoding.tiles[i].read_extent, footprint, by_row[i], encoding.tiles[i].depth,
                      encoding.tiles[i].gsd_m / metres_per_unit) for i, footprint in outline_parts(encoding)]
    named = class_size(bundle, text) if config.size_prior else None
    size = None if named is None else (named[1][0] / metres_per_unit, named[1][1] / metres_per_unit)
    found = vectorise(grids, config.threshold, config.max_box_cells, config.min_box_fill, config.min_cells, size)
    return outline_records(found[:config.max_outlines], text, metres_per_unit, source_name)


def finest_objects(encoding: "Encoding") -> dict[int, np.ndarray]:
    """Object tokens (G*G, D) by row of the tiles that outline: a guided encoding's tiles near native
    resolution, else the leaves."""
    guided = getattr(encoding, "objects", None)
    if guided is not None:
        return guided
    objects = encoding.tiers.get("objects")
    if objects is None:
        return {}
    return {i: objects[i] for i, t in enumerate(encoding.tiles) if "object" in t.levels}


def outline_parts(encoding: "Encoding") -> list:
    """(row, footprint) of what each tile outlines: a guided encoding's
    :attr:`~.guided.GuidedEncoding.outline_parts`, else every leaf over its footprint."""
    parts = getattr(encoding, "outline_parts", None)
    if parts is not None:
        return parts
    return [(i, encoding.tiles[i].extent) for i in sorted(finest_objects(encoding))]


def outline_records(outlines: list[Outline], text: str, metres_per_unit: float,
                    source_name: str = "") -> list[OutlineRecord]:
    """Outlines as records for the writer (rank 1 first)."""
    from ..geometry import Extent

    records = []
    for rank, outline in enumerate(outlines, start=1):
        records.append(OutlineRecord(
            query=text, rank=rank, score=float(outline.score), shape=outline.shape, cells=outline.cells,
            area_m2=float(outline.geometry.area) * metres_per_unit ** 2, depth=outline.depth,
            gsd_m=float(outline.gsd) * metres_per_unit, extent=Extent(*outline.bounds),
            geometry_wkb=bytes(outline.geometry.wkb), source=source_name))
    return records
