"""The DRIS plan as records: a layer that shows where the model spent its compute.

Every node of the quadtree becomes one :class:`PlanTileRecord`; the leaves (the tiles the model
encoded) are marked, so a map of the plan shows fine tiles where the image was busy (or, for a
query-guided plan, where the query scored) and coarse ones elsewhere; the ``reason`` field says
why each node was split ("complexity", "query", "uniform") or, for a leaf, why it is as fine as
it is, and ``score`` holds the query score of the tiles a guided plan encoded.
"""

from __future__ import annotations

from .dris import TilePlan
from ..records import PlanTileRecord

PLAN_LAYER = "dris_plan"
"""GeoPackage layer name of the DRIS plan."""


def plan_records(plan: TilePlan, metres_per_unit: float, source_name: str,
                 leaves_only: bool = False) -> list[PlanTileRecord]:
    """The nodes of a DRIS plan as records, coarsest first.

    Args:
        plan: The plan (``EncodeResult.plan`` / ``DescribeResult.plan``).
        metres_per_unit: Metres per map unit of the raster's CRS (``GeoReference.metres_per_unit``),
            to give the ground sample distance in metres.
        source_name: Name of the raster, for the ``source`` field.
        leaves_only: Keep only the encoded tiles (the leaves), not the nodes that were split.

    Returns:
        One record per node, in the plan's order (by depth, then key).
    """
    return [
        PlanTileRecord(key=tile.key, depth=tile.depth, complexity=float(tile.complexity), is_leaf=tile.is_leaf,
                       gsd_m=float(tile.gsd) * metres_per_unit, extent=tile.extent, source=source_name,
                       reason=tile.split_reason or tile.reason,
                       score=float(plan.scores[tile.key]) if tile.key in plan.scores else None)
        for tile in plan.nodes
        if tile.is_leaf or not leaves_only
    ]
