"""A :class:`RasterSource` that reads pixels through a QGIS raster layer's own data provider.

Any raster QGIS can draw works this way: files (GDAL), WMS/WMTS, XYZ tiles, PostGIS rasters,
virtual rasters. The layer's nodata settings (source and user nodata) and scale/offset are
honoured because the provider applies them to the blocks it returns.

Thread safety: QGIS data providers must not be shared between threads. The constructor (run
it on the main thread) clones the layer's provider; every later read uses only the clone, so a
:class:`QgsLayerSource` can be handed to a QgsTask or a Processing algorithm's worker thread,
the same way QGIS's own renderers clone the raster pipe before drawing in the background.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from qgis.core import (
    Qgis,
    QgsRasterDataProvider,
    QgsRasterLayer,
    QgsRasterRange,
    QgsRectangle,
    QgsUnitTypes,
)

from ..core.errors import RsVlmError
from ..core.geometry import Extent, GeoReference, metres_per_degree
from ..core.raster import NO_CRS_WARNING, RasterSource

NOMINAL_GSD_M = 0.3
"""Pixel size, in metres, assumed for providers without a native pixel grid (WMS, XYZ, WCS
without size) when the caller gives none. Typical of aerial orthophotos, so DRIS may refine
down to 0.3 m but no finer; the plugin passes the map canvas's resolution instead when it has
one, so the finest tiles match what the user sees."""

_NUMPY_TYPES = {
    Qgis.DataType.Byte: np.uint8,
    Qgis.DataType.UInt16: np.uint16,
    Qgis.DataType.Int16: np.int16,
    Qgis.DataType.UInt32: np.uint32,
    Qgis.DataType.Int32: np.int32,
    Qgis.DataType.Float32: np.float32,
    Qgis.DataType.Float64: np.float64,
}
_COLOUR_TYPES = (Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied)
_NATIVE_TOLERANCE = 1e-6  # relative difference of pixel sizes still read as native resolution


class QgsLayerSource(RasterSource):
    """The pixels of a QGIS raster layer, read through a clone of its data provider.

    Args:
        layer: A valid raster layer. Construct on the main thread.
        nominal_gsd_m: For providers without native pixel size (WMS, XYZ): the pixel size in
            metres that the grid is built from (default :data:`NOMINAL_GSD_M`). Ignored for
            providers with a native grid.
        rgb_bands: 1-based band numbers to show as red, green, blue (default: the base
            class's choice).

    Raises:
        RsVlmError: The layer is invalid, has no bands, or its data type cannot be read.
    """

    def __init__(self, layer: QgsRasterLayer, nominal_gsd_m: float | None = None,
                 rgb_bands: tuple[int, int, int] | None = None) -> None:
        if layer is None or not layer.isValid() or layer.dataProvider() is None:
            label = layer.name() if layer is not None else "(none)"
            raise RsVlmError(f"The raster layer {label} is not valid; check that its source can be opened in QGIS.")
        provider = layer.dataProvider().clone()
        if provider is None:
            raise RsVlmError(f"The data provider of the layer {layer.name()} cannot be copied for reading; "
                             "save the layer to a GeoTIFF and try again.")
        self._provider: QgsRasterDataProvider = provider
        # A second clone without provider resampling serves native-resolution reads exactly.
        self._native_provider: QgsRasterDataProvider = layer.dataProvider().clone()
        self.layer_id = layer.id()
        band_types = [provider.dataType(b) for b in range(1, provider.bandCount() + 1)]
        self._colour = bool(band_types) and all(t in _COLOUR_TYPES for t in band_types)
        if self._colour:
            band_count, dtype = 3, "uint8"  # one ARGB band becomes red, green, blue
        else:
            unknown = [t for t in band_types if t not in _NUMPY_TYPES]
            if unknown:
                raise RsVlmError(
                    f"The layer {layer.name()} has bands of a data type RS-VLM cannot read ({unknown[0]}); "
                    "convert it to Byte, integer or Float32 bands (Raster > Conversion > Translate) first."
                )
            band_count = len(band_types)
            dtype = np.result_type(*[_NUMPY_TYPES[t] for t in band_types]).name if band_types else "uint8"
        georef, notes = _georeference(layer, provider, nominal_gsd_m)
        super().__init__(layer.name(), georef, band_count, dtype, rgb_bands)
        for note in notes:
            self._warn_once(note)
        self._use_provider_resampling()

    @property
    def provider(self) -> QgsRasterDataProvider:
        """The cloned provider all reads go through."""
        return self._provider

    def _use_provider_resampling(self) -> None:
        """Average when zooming out and bilinear when zooming in, like the rasterio source.

        The default (nearest neighbour) aliases badly on coarse overview reads. Reads at the
        native resolution go to a clone without resampling, so they return the stored values
        (the GDAL provider may otherwise resample a read that is native to 1e-12).
        """
        p = self._provider
        self._native_provider.enableProviderResampling(False)
        if int(p.providerCapabilities()) & int(QgsRasterDataProvider.ProviderCapability.ProviderHintCanPerformProviderResampling):
            p.enableProviderResampling(True)
            p.setZoomedOutResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Average)
            p.setZoomedInResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Bilinear)

    def read_bands(self, extent: Extent, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        if width < 1 or height < 1:
            raise ValueError(f"A read needs a positive size, got {width} x {height}.")
        g = self.georef
        rect = QgsRectangle(extent.xmin, extent.ymin, extent.xmax, extent.ymax)
        valid = _inside_mask(g.extent, extent, width, height)
        data = np.zeros((self.band_count, height, width), np.float32)
        if not valid.any():
            return data, valid
        native = (abs(extent.width / width - g.pixel_width) <= _NATIVE_TOLERANCE * g.pixel_width
                  and abs(extent.height / height - g.pixel_height) <= _NATIVE_TOLERANCE * g.pixel_height)
        provider = self._native_provider if native else self._provider
        if self._colour:
            argb = _block_to_numpy(self._block(provider, 1, rect, width, height), width, height)
            bgra = argb.view(np.uint8).reshape(height, width, 4)  # QRgb 0xAARRGGBB, little-endian bytes
            alpha = bgra[..., 3].astype(np.float32)
            rgb = bgra[..., 2::-1].astype(np.float32)
            if provider.dataType(1) == Qgis.DataType.ARGB32_Premultiplied:
                rgb = np.where(alpha[..., None] > 0, rgb * 255.0 / np.maximum(alpha[..., None], 1.0), 0.0)
            data[:] = np.clip(rgb, 0, 255).transpose(2, 0, 1)
            valid &= alpha >= 128
            return data, valid
        fully_inside = bool(valid.all())
        for band in range(1, self.band_count + 1):
            values, ok = self._read_band(provider, band, rect, width, height, fully_inside)
            data[band - 1] = values
            valid &= ok
        return data, valid

    def _block(self, provider: QgsRasterDataProvider, band: int, rect: QgsRectangle, width: int, height: int):
        block = provider.block(band, rect, width, height)
        if block is None or not block.isValid() or block.width() != width or block.height() != height:
            error = provider.error().summary() if provider.error() else ""
            raise RsVlmError(
                f"QGIS could not read band {band} of the layer {self.name}"
                f"{' (' + error + ')' if error else ''}; check that its source is reachable and try again."
            )
        return block

    def _read_band(self, provider: QgsRasterDataProvider, band: int, rect: QgsRectangle, width: int, height: int,
                   fully_inside: bool) -> tuple[np.ndarray, np.ndarray]:
        """One band as float32 and where it is valid (outside the raster is masked by the caller)."""
        block = self._block(provider, band, rect, width, height)
        values = _block_to_numpy(block, width, height)
        ok = np.ones((height, width), bool)
        if np.issubdtype(values.dtype, np.floating):
            ok &= np.isfinite(values)
        if block.hasNoDataValue():
            nodata = block.noDataValue()
            if not math.isnan(nodata):
                ok &= values != np.asarray(nodata).astype(values.dtype)
        # Without a nodata value QGIS marks nodata in a per-pixel bitmap, which Python reads only
        # pixel by pixel. Its usual causes are cheaper to recompute: the layer's user nodata
        # ranges (below) and areas outside the raster (the caller's extent mask).
        ranges = provider.userNoDataValues(band)
        if ranges:
            ok &= ~_in_ranges(values, ranges)
        elif block.hasNoData() and not block.hasNoDataValue() and fully_inside:
            ok &= _bitmap_mask(block, width, height)
        return values.astype(np.float32), ok


def _block_to_numpy(block, width: int, height: int) -> np.ndarray:
    """A QgsRasterBlock's values as a (height, width) array of its own type."""
    data_type = block.dataType()
    if data_type in _COLOUR_TYPES:
        dtype = np.uint32
    elif data_type in _NUMPY_TYPES:
        dtype = _NUMPY_TYPES[data_type]
    else:
        raise RsVlmError(f"QGIS returned a block of data type {data_type}, which RS-VLM cannot read; "
                         "convert the layer to Byte, integer or Float32 bands first.")
    raw = bytes(block.data())
    return np.frombuffer(raw, dtype=dtype, count=width * height).reshape(height, width).copy()


def _in_ranges(values: np.ndarray, ranges) -> np.ndarray:
    """Where values fall in any of the layer's user nodata ranges (QgsRasterRange)."""
    hit = np.zeros(values.shape, bool)
    v = values.astype(np.float64)
    for r in ranges:
        lo, hi, bounds = r.min(), r.max(), r.bounds()
        above = v >= lo if bounds in (QgsRasterRange.BoundsType.IncludeMinAndMax, QgsRasterRange.BoundsType.IncludeMin) else v > lo
        below = v <= hi if bounds in (QgsRasterRange.BoundsType.IncludeMinAndMax, QgsRasterRange.BoundsType.IncludeMax) else v < hi
        if math.isnan(lo):
            above = np.ones(v.shape, bool)
        if math.isnan(hi):
            below = np.ones(v.shape, bool)
        hit |= above & below
    return hit


def _bitmap_mask(block, width: int, height: int) -> np.ndarray:
    """Valid pixels of a block whose nodata is a bitmap (slow: one call per pixel)."""
    ok = np.ones((height, width), bool)
    is_no_data = block.isNoData
    for row in range(height):
        for col in range(width):
            if is_no_data(row, col):
                ok[row, col] = False
    return ok


def _inside_mask(raster: Extent, request: Extent, width: int, height: int) -> np.ndarray:
    """Output pixels whose centres fall inside the raster's extent."""
    xs = request.xmin + (np.arange(width) + 0.5) * (request.width / width)
    ys = request.ymax - (np.arange(height) + 0.5) * (request.height / height)
    inside_x = (xs >= raster.xmin) & (xs < raster.xmax)
    inside_y = (ys > raster.ymin) & (ys <= raster.ymax)
    return inside_y[:, None] & inside_x[None, :]


def _clean(value: float) -> float:
    """A pixel size without the float noise of extent / size (9.999999999999786e-05 -> 1e-4)."""
    return float(f"{value:.12g}")


def _metres_per_unit(layer: QgsRasterLayer, extent: QgsRectangle) -> float:
    crs = layer.crs()
    if not crs.isValid():
        return 1.0
    units = crs.mapUnits()
    if units == QgsUnitTypes.DistanceUnit.DistanceDegrees:
        return metres_per_degree(extent.center().y())
    if units == QgsUnitTypes.DistanceUnit.DistanceUnknownUnit:
        return 1.0
    return QgsUnitTypes.fromUnitToUnitFactor(units, QgsUnitTypes.DistanceUnit.DistanceMeters)


def _georeference(layer: QgsRasterLayer, provider: QgsRasterDataProvider,
                  nominal_gsd_m: float | None) -> tuple[GeoReference, list[str]]:
    """The layer's pixel grid, and sentences about how it was interpreted."""
    notes = []
    extent = provider.extent()
    if extent.isEmpty():
        raise RsVlmError(f"The layer {layer.name()} has an empty extent; check its source.")
    crs = layer.crs()
    crs_wkt = crs.toWkt() if crs.isValid() else None
    if crs_wkt is None:
        notes.append(NO_CRS_WARNING)
    metres = _metres_per_unit(layer, extent)
    if int(provider.capabilities()) & int(QgsRasterDataProvider.Size) and provider.xSize() > 0 and provider.ySize() > 0:
        width, height = provider.xSize(), provider.ySize()
        # The layer's pixel size comes from the geotransform; extent / size can be off in the
        # last digits, which makes a native-resolution read look like a resampled one.
        pixel_x, pixel_y = _clean(layer.rasterUnitsPerPixelX()), _clean(layer.rasterUnitsPerPixelY())
    else:
        gsd_m = nominal_gsd_m if nominal_gsd_m and nominal_gsd_m > 0 else NOMINAL_GSD_M
        pixel_x = pixel_y = gsd_m / metres
        width = max(1, int(math.ceil(extent.width() / pixel_x)))
        height = max(1, int(math.ceil(extent.height() / pixel_y)))
        notes.append(
            f"The layer {layer.name()} has no native pixel size (a web map service or tiles); it was read "
            f"as if its pixels were {gsd_m:.3g} m, so the finest tiles see about that resolution."
        )
    georef = GeoReference(width, height, extent.xMinimum(), extent.yMaximum(), pixel_x, pixel_y, crs_wkt, metres)
    return georef, notes


def layer_source_id(layer) -> str:
    """A stable identity of a layer's data: provider and source, plus size and time for files.

    An index built for one file is found again for the same file, and not after it changed.
    """
    source = layer.source()
    path = Path(source.split("|")[0])
    try:
        stat = path.stat()
        source = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    except OSError:
        pass  # a web or database source: its URI is its identity
    return f"{layer.providerType()}:{source}"
