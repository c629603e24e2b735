"""Extents and the pixel grid of a raster, as plain values (no QgsRectangle, no Affine)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import RsVlmError


@dataclass(frozen=True)
class Extent:
    """An axis-aligned rectangle in map units (or pixels when the raster has no CRS)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    def __post_init__(self) -> None:
        if not (self.xmax > self.xmin and self.ymax > self.ymin):
            raise RsVlmError(
                f"The extent ({self.xmin}, {self.ymin}, {self.xmax}, {self.ymax}) is empty; "
                "give xmin < xmax and ymin < ymax."
            )

    @property
    def width(self) -> float:
        """Width in map units."""
        return self.xmax - self.xmin

    @property
    def height(self) -> float:
        """Height in map units."""
        return self.ymax - self.ymin

    @property
    def center(self) -> tuple[float, float]:
        """Centre point (x, y)."""
        return ((self.xmin + self.xmax) / 2.0, (self.ymin + self.ymax) / 2.0)

    def intersection(self, other: "Extent") -> "Extent | None":
        """The overlap of two extents, or None when they do not overlap."""
        xmin, ymin = max(self.xmin, other.xmin), max(self.ymin, other.ymin)
        xmax, ymax = min(self.xmax, other.xmax), min(self.ymax, other.ymax)
        if xmax <= xmin or ymax <= ymin:
            return None
        return Extent(xmin, ymin, xmax, ymax)

    def quadrants(self) -> tuple["Extent", "Extent", "Extent", "Extent"]:
        """The four children in quadtree order: north-west, north-east, south-west, south-east."""
        cx, cy = self.center
        return (
            Extent(self.xmin, cy, cx, self.ymax),
            Extent(cx, cy, self.xmax, self.ymax),
            Extent(self.xmin, self.ymin, cx, cy),
            Extent(cx, self.ymin, self.xmax, cy),
        )

    def as_tuple(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax)."""
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    def to_polygon(self):
        """A shapely polygon of this extent."""
        from shapely.geometry import box

        return box(self.xmin, self.ymin, self.xmax, self.ymax)


@dataclass(frozen=True)
class GeoReference:
    """The pixel grid of a north-up raster.

    Attributes:
        width: Raster width in pixels.
        height: Raster height in pixels.
        origin_x: Map x of the left edge.
        origin_y: Map y of the top edge.
        pixel_width: Pixel size along x in map units (positive).
        pixel_height: Pixel size along y in map units (positive; rows go south).
        crs_wkt: The CRS as WKT, or None when the raster has none (then map units are pixels).
        metres_per_unit: Metres per map unit along x at the raster's centre
            (1 for projected metric CRSs, about 111 km per degree for geographic ones).
    """

    width: int
    height: int
    origin_x: float
    origin_y: float
    pixel_width: float
    pixel_height: float
    crs_wkt: str | None = None
    metres_per_unit: float = 1.0

    @classmethod
    def pixel_space(cls, width: int, height: int) -> "GeoReference":
        """A grid with no CRS: x to the right, y up, one unit per pixel, origin bottom-left."""
        return cls(width, height, 0.0, float(height), 1.0, 1.0, None, 1.0)

    @property
    def extent(self) -> Extent:
        """The whole raster's extent."""
        return Extent(
            self.origin_x,
            self.origin_y - self.height * self.pixel_height,
            self.origin_x + self.width * self.pixel_width,
            self.origin_y,
        )

    @property
    def native_gsd(self) -> float:
        """The finest pixel size in map units."""
        return min(self.pixel_width, self.pixel_height)

    @property
    def native_gsd_m(self) -> float:
        """The finest pixel size in metres (approximate for geographic CRSs)."""
        return self.native_gsd * self.metres_per_unit

    def pixel_window(self, extent: Extent) -> tuple[float, float, float, float]:
        """Fractional pixel window (col_off, row_off, width, height) of a map extent."""
        col0 = (extent.xmin - self.origin_x) / self.pixel_width
        col1 = (extent.xmax - self.origin_x) / self.pixel_width
        row0 = (self.origin_y - extent.ymax) / self.pixel_height
        row1 = (self.origin_y - extent.ymin) / self.pixel_height
        return (col0, row0, col1 - col0, row1 - row0)

    def clip(self, extent: Extent) -> Extent:
        """The part of ``extent`` inside the raster; a sentence-error when they do not meet."""
        inside = self.extent.intersection(extent)
        if inside is None:
            r = self.extent
            raise RsVlmError(
                f"The requested extent ({extent.xmin:.6g}, {extent.ymin:.6g}, {extent.xmax:.6g}, "
                f"{extent.ymax:.6g}) does not overlap the raster, which covers ({r.xmin:.6g}, "
                f"{r.ymin:.6g}, {r.xmax:.6g}, {r.ymax:.6g}); pan to the raster or give an extent "
                "in the raster's CRS."
            )
        return inside


def metres_per_degree(latitude: float) -> float:
    """Metres per degree of longitude at a latitude (spherical approximation)."""
    return 111_320.0 * max(0.01, math.cos(math.radians(latitude)))
