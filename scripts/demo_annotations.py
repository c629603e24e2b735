"""Hand-made annotation of the demo scene (NEON 2019_YELL_2_541000_4977000 crop, 1249 x 1035 px):
the centre line of the paved road that curves through the forest from the top to the bottom edge.

The demo's search for "a paved road through a forest" must put first a tile that this road runs
through; ``scripts/demo.py`` prints whether it does and ``tests/model/test_demo_road.py`` checks it.
"""

from __future__ import annotations

# (column, row) pixel vertices of the road's centre line, drawn over the image and checked by eye.
ROAD_PIXELS = ((175, 0), (205, 120), (240, 260), (300, 450), (370, 590), (450, 700), (540, 820), (610, 930),
               (680, 1035))


def road_in_map_units(transform) -> list[tuple[float, float]]:
    """The road's vertices in the raster's map coordinates (``transform``: an affine pixel -> map transform)."""
    return [tuple(transform * (c, r)) for c, r in ROAD_PIXELS]


def runs_through(extent, transform) -> bool:
    """Whether the road runs through a tile's extent (an object with xmin, ymin, xmax, ymax in map units)."""
    from shapely.geometry import LineString, box

    return LineString(road_in_map_units(transform)).intersects(box(extent.xmin, extent.ymin, extent.xmax, extent.ymax))
