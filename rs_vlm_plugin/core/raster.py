"""Reading rasters as the 8-bit RGB images the encoders see.

A :class:`RasterSource` answers one question: "what does this map extent look like at
``width`` x ``height`` pixels?". Subclasses read all bands as float32 with a validity mask
(:meth:`RasterSource.read_bands`); the base class picks the RGB bands, scales them to 0..255
and blanks pixels outside the raster or on nodata (:meth:`RasterSource.read`).

rasterio is imported only by :class:`RasterioSource`, so :class:`ArraySource` (tests, PNG
crops) and the QGIS shell's provider-backed source work where rasterio is not installed.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import RsVlmError
from .geometry import Extent, GeoReference, metres_per_degree

STRETCH_PERCENTILES = (2.0, 98.0)
"""Percentiles of the valid pixels mapped to 0 and 255 when the raster is not 8-bit."""

STRETCH_SAMPLE_SIZE = 512
"""Long side, in pixels, of the whole-raster read the stretch percentiles come from."""

NO_CRS_WARNING = "The raster has no CRS; it was processed in pixel coordinates and the output has no CRS."

_SCALE_TOLERANCE = 1e-6

GDAL_CACHE_MB = 256
"""GDAL's block cache, unless GDAL_CACHEMAX is set already: GDAL's default (5 % of the RAM) keeps
every decoded block of a large raster, which a job reading each tile once does not need (a
20k x 20k RGB raster would hold 1.2 GB); a row of tiles of such a raster takes about 30 MB."""


class RasterSource(ABC):
    """A raster that can be read at any extent and size.

    Attributes:
        name: A short name for the raster (shown to the user and stored in records).
        georef: The raster's pixel grid and CRS.
        band_count: Number of bands.
        source_dtype: numpy name of the stored data type ("uint8", "uint16", "float32", ...).
        rgb_bands: 1-based band numbers shown as red, green and blue, or None for the default
            (bands 1, 2, 3 when there are three or more, band 1 as grey otherwise).
        warnings: Sentences about how the raster was interpreted; each is added once.
        balance_bytes: Stretch 8-bit rasters per band too (2nd-98th percentiles), which
            removes colour casts (blue shadows, haze) that the model never saw in training.
            Set it to False to feed 8-bit pixels unchanged.
    """

    balance_bytes: bool = True

    def __init__(self, name: str, georef: GeoReference, band_count: int, source_dtype: str,
                 rgb_bands: tuple[int, int, int] | None = None) -> None:
        if band_count < 1:
            raise RsVlmError(f"The raster {name} has no bands; give a raster with at least one band.")
        self.name = name
        self.georef = georef
        self.band_count = band_count
        self.source_dtype = np.dtype(source_dtype).name
        self.rgb_bands = _check_rgb_bands(rgb_bands, band_count, name)
        self.warnings: list[str] = []
        self._stretch: tuple[np.ndarray, np.ndarray] | None = None

    @abstractmethod
    def read_bands(self, extent: Extent, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Read every band of ``extent`` resampled to ``width`` x ``height`` pixels.

        Args:
            extent: The area to read, in the raster's CRS (it may reach outside the raster).
            width: Output width in pixels.
            height: Output height in pixels.

        Returns:
            ``(data, valid)``: float32 ``(band_count, height, width)`` values and a bool
            ``(height, width)`` mask, False outside the raster and on nodata.
        """

    @property
    def display_bands(self) -> tuple[int, int, int]:
        """0-based indices of the bands shown as red, green and blue."""
        if self.rgb_bands is not None:
            return tuple(b - 1 for b in self.rgb_bands)  # type: ignore[return-value]
        return (0, 1, 2) if self.band_count >= 3 else (0, 0, 0)

    def read(self, extent: Extent, width: int, height: int) -> np.ndarray:
        """Read ``extent`` as an 8-bit RGB image.

        Every band is stretched between the 2nd and 98th percentiles of the whole raster (see
        :meth:`stretch_limits`); 8-bit rasters pass through unchanged when
        :attr:`balance_bytes` is False.

        Args:
            extent: The area to read, in the raster's CRS.
            width: Output width in pixels.
            height: Output height in pixels.

        Returns:
            uint8 ``(height, width, 3)``; pixels outside the raster or on nodata are 0.
        """
        return self.read_masked(extent, width, height)[0]

    def read_masked(self, extent: Extent, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read`, with the bool ``(height, width)`` mask of the valid pixels."""
        data, valid = self.read_bands(extent, width, height)
        rgb = data[list(self.display_bands)]
        valid = valid & np.isfinite(rgb).all(axis=0)
        rgb = np.where(valid, rgb, 0.0)
        if self.source_dtype != "uint8" or self.balance_bytes:
            lo, hi = self.stretch_limits()
            rgb = (rgb - lo[:, None, None]) * (255.0 / (hi - lo))[:, None, None]
        out = np.where(valid, np.clip(np.rint(rgb), 0, 255), 0).astype(np.uint8)
        return np.ascontiguousarray(out.transpose(1, 2, 0)), valid

    def stretch_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per displayed band, the values mapped to 0 and 255 (computed once, then cached).

        The percentiles come from a read of the whole raster at most
        :data:`STRETCH_SAMPLE_SIZE` pixels on its long side, valid pixels only, so every tile
        of a job is scaled the same way. The first call adds a warning.
        """
        if self._stretch is None:
            g = self.georef
            scale = min(1.0, STRETCH_SAMPLE_SIZE / max(g.width, g.height))
            width, height = max(1, round(g.width * scale)), max(1, round(g.height * scale))
            data, valid = self.read_bands(g.extent, width, height)
            lows, highs = [], []
            for band in self.display_bands:
                values = data[band][valid & np.isfinite(data[band])]
                lo, hi = (np.percentile(values, STRETCH_PERCENTILES) if values.size else (0.0, 1.0))
                lows.append(lo)
                highs.append(hi if hi > lo else lo + 1.0)
            self._stretch = (np.asarray(lows, np.float32), np.asarray(highs, np.float32))
            if self.source_dtype != "uint8":
                self._warn_once(
                    f"The raster {self.name} is not 8-bit ({self.source_dtype}); each band was stretched to "
                    f"0-255 between its {STRETCH_PERCENTILES[0]:g}th and {STRETCH_PERCENTILES[1]:g}th "
                    "percentiles."
                )
        return self._stretch

    def _warn_once(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


class RasterioSource(RasterSource):
    """A raster file read with rasterio (any format GDAL reads).

    Reads coarser than the native resolution average the source pixels (GDAL uses the
    overviews when there are any); finer reads interpolate bilinearly. Areas outside the
    raster come back invalid, not as an error.

    Args:
        path: The raster file (or a GDAL ``/vsi...`` path).
        rgb_bands: 1-based band numbers to show as red, green, blue.
        name: Name for the user; the file name without its extension by default.

    Raises:
        RsVlmError: The file is missing, is not a raster GDAL reads, has no bands, or is
            rotated / not north-up.
    """

    def __init__(self, path: str | Path, rgb_bands: tuple[int, int, int] | None = None,
                 name: str | None = None) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        _limit_gdal_cache()
        self.path = Path(path)
        label = name or self.path.stem
        if not str(path).startswith("/vsi") and not self.path.exists():
            raise RsVlmError(f"The raster file {self.path} does not exist; check the path.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(self.path)
        except RasterioIOError as exc:
            raise RsVlmError(
                f"{self.path} is not a raster GDAL can read; give a GeoTIFF, VRT, JPEG or PNG file."
            ) from exc
        try:
            if self._ds.count == 0:
                raise RsVlmError(
                    f"The raster {self.path} has no bands; if it is a container (NetCDF, HDF), "
                    "open one of its subdatasets instead."
                )
            georef, has_crs = _georeference(self._ds, label)
            self._palette = _palette_table(self._ds)
            dtype = "uint8" if self._palette is not None else np.result_type(*self._ds.dtypes).name
            count = 3 if self._palette is not None else self._ds.count  # a palette band reads as RGB
            super().__init__(label, georef, count, dtype, rgb_bands)
        except BaseException:
            self._ds.close()
            raise
        if not has_crs:
            self._warn_once(NO_CRS_WARNING)
        self._all_valid = all(flags == [_all_valid_flag()] for flags in self._ds.mask_flag_enums)
        self._is_float = np.issubdtype(np.dtype(dtype), np.floating)

    def read_bands(self, extent: Extent, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        _check_size(width, height)
        g = self.georef
        data = np.zeros((self.band_count, height, width), np.float32)
        valid = np.zeros((height, width), bool)
        col0, row0, n_cols, n_rows = g.pixel_window(extent)
        step_x, step_y = n_cols / width, n_rows / height  # source pixels per output pixel
        cols = _inside_range(col0, step_x, width, g.width)
        rows = _inside_range(row0, step_y, height, g.height)
        if cols is None or rows is None:
            return data, valid
        (j0, j1), (i0, i1) = cols, rows
        # The source window under output pixels [j0, j1) x [i0, i1), clipped to the raster: an
        # edge pixel whose centre is inside may reach out by less than half its size.
        x0, x1 = max(0.0, col0 + j0 * step_x), min(float(g.width), col0 + j1 * step_x)
        y0, y1 = max(0.0, row0 + i0 * step_y), min(float(g.height), row0 + i1 * step_y)
        window = Window(x0, y0, x1 - x0, y1 - y0)
        shape = (self.band_count, i1 - i0, j1 - j0)
        if step_x > 1 + _SCALE_TOLERANCE or step_y > 1 + _SCALE_TOLERANCE:
            resampling = Resampling.average
        elif step_x < 1 - _SCALE_TOLERANCE or step_y < 1 - _SCALE_TOLERANCE:
            resampling = Resampling.bilinear
        else:
            resampling = Resampling.nearest
        with self._damage_as_sentence(window):
            if self._palette is not None:  # indices are not values to average: the nearest, then its colour
                resampling = Resampling.nearest
                colours = self._palette[self._ds.read(1, window=window, out_shape=shape[1:], resampling=resampling)]
                block = np.moveaxis(colours[..., :3], -1, 0).astype(np.float32)
            else:
                block = self._ds.read(window=window, out_shape=shape, resampling=resampling, out_dtype="float32")
            masks = None if self._all_valid else self._ds.read_masks(window=window, out_shape=shape,
                                                                     resampling=resampling)
        ok = np.ones(shape[1:], bool)
        if self._palette is not None:
            ok &= colours[..., 3] > 0  # a transparent entry of the colour table
        if masks is not None:
            ok &= (masks >= 128).all(axis=0)  # at least half of the pixel's area is valid
        if self._is_float:
            ok &= np.isfinite(block).all(axis=0)
        data[:, i0:i1, j0:j1] = block
        valid[i0:i1, j0:j1] = ok
        return data, valid

    @contextmanager
    def _damage_as_sentence(self, window):
        """Turn GDAL's read errors (a damaged or truncated file) into a sentence-error."""
        from rasterio._err import CPLE_BaseError
        from rasterio.errors import RasterioError, RasterioIOError

        try:
            yield
        except (RasterioError, RasterioIOError, CPLE_BaseError) as exc:
            raise RsVlmError(
                f"The raster file {self.path} could not be read near pixel column {int(window.col_off)}, row "
                f"{int(window.row_off)} ({str(exc).splitlines()[0]}); the file is damaged or incomplete. Restore "
                "it from the original, or write it again (gdal_translate), and try again.") from exc

    def close(self) -> None:
        """Close the file."""
        self._ds.close()

    def __enter__(self) -> "RasterioSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ArraySource(RasterSource):
    """An in-memory raster (tests, PNG crops).

    Resampling is by area: each output pixel is the area-weighted mean of the source pixels
    it covers (nearest neighbour when reading finer than native).

    Args:
        array: ``(C, H, W)`` values (a ``(H, W)`` array is one band).
        georef: The pixel grid; pixel coordinates (:meth:`GeoReference.pixel_space`) by default.
        nodata: Value marking missing pixels (a pixel is invalid when any band has it).
        name: Name for the user.
        rgb_bands: 1-based band numbers to show as red, green, blue.
    """

    def __init__(self, array: np.ndarray, georef: GeoReference | None = None, nodata: float | None = None,
                 name: str = "array", rgb_bands: tuple[int, int, int] | None = None) -> None:
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(f"ArraySource needs a (C, H, W) array, got shape {array.shape}.")
        count, rows, cols = array.shape
        georef = georef or GeoReference.pixel_space(cols, rows)
        if (georef.width, georef.height) != (cols, rows):
            raise ValueError(f"The georeference is {georef.width} x {georef.height} but the array is {cols} x {rows}.")
        super().__init__(name, georef, count, array.dtype.name, rgb_bands)
        self._array = array
        self._nodata = nodata
        if georef.crs_wkt is None:
            self._warn_once(NO_CRS_WARNING)

    def read_bands(self, extent: Extent, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: D102
        _check_size(width, height)
        g = self.georef
        data = np.zeros((self.band_count, height, width), np.float32)
        valid = np.zeros((height, width), bool)
        col0, row0, n_cols, n_rows = g.pixel_window(extent)
        wx = _area_weights(col0, n_cols, width, g.width)
        wy = _area_weights(row0, n_rows, height, g.height)
        if wx is None or wy is None:
            return data, valid
        (wx, c0, c1), (wy, r0, r1) = wx, wy
        raw = self._array[:, r0:r1, c0:c1]
        block = raw.astype(np.float32)
        ok = np.isfinite(block).all(axis=0)
        if self._nodata is not None and not np.isnan(self._nodata):  # NaN is caught by isfinite
            ok &= ~(raw == self._nodata).any(axis=0)  # compared in the stored type, exactly
        values = np.where(ok, block, 0.0)
        weight = wy @ ok.astype(np.float32) @ wx.T  # valid fraction of each output pixel's area
        total = wy @ values @ wx.T
        valid = weight >= 0.5 - 1e-6
        data = np.where(valid, total / np.maximum(weight, 1e-12), 0.0).astype(np.float32)
        return data, valid


def open_raster(path: str | Path, rgb_bands: tuple[int, int, int] | None = None) -> RasterioSource:
    """Open a raster file for reading.

    Args:
        path: The raster file.
        rgb_bands: 1-based band numbers to show as red, green, blue (default: 1, 2, 3, or band
            1 as grey for one- and two-band rasters).

    Returns:
        The open source; close it (or use it as a context manager) when done.

    Raises:
        RsVlmError: The file is missing, is not a raster GDAL reads, or has no bands.
    """
    return RasterioSource(path, rgb_bands=rgb_bands)


def _limit_gdal_cache() -> None:
    """Lower GDAL's block cache to :data:`GDAL_CACHE_MB`, unless the user set GDAL_CACHEMAX or the
    process is QGIS (whose renderer shares the cache and sizes it itself)."""
    import os
    import sys

    from rasterio.env import get_gdal_config, set_gdal_config

    if "GDAL_CACHEMAX" in os.environ or "qgis.core" in sys.modules:
        return
    limit = GDAL_CACHE_MB << 20
    current = get_gdal_config("GDAL_CACHEMAX")  # rasterio reports GDAL's cache size in bytes
    if not isinstance(current, int) or current > limit:
        set_gdal_config("GDAL_CACHEMAX", limit)  # an int is taken as bytes


def _all_valid_flag():
    from rasterio.enums import MaskFlags

    return MaskFlags.all_valid


def _palette_table(ds) -> np.ndarray | None:
    """The colour table of a one-band paletted raster as a ``(entries, 4)`` uint8 RGBA lookup, else None
    (indices missing from the table are transparent)."""
    from rasterio.enums import ColorInterp

    if ds.count != 1 or ds.colorinterp[0] != ColorInterp.palette or ds.dtypes[0] not in ("uint8", "uint16"):
        return None
    try:
        colormap = ds.colormap(1)
    except ValueError:  # a palette interpretation without a table
        return None
    table = np.zeros((256 if ds.dtypes[0] == "uint8" else 65536, 4), np.uint8)
    for index, rgba in colormap.items():
        if 0 <= index < len(table):
            table[index] = rgba
    return table


def _georeference(ds, name: str) -> tuple[GeoReference, bool]:
    """The grid of an open rasterio dataset, and whether it has a CRS."""
    t = ds.transform
    if ds.crs is None or t.is_identity:
        # Plain images (PNG, JPEG) come with an identity transform whose y runs down; pixel
        # space keeps the first row at the top with y up, so the image stays north-up.
        return GeoReference.pixel_space(ds.width, ds.height), False
    if t.b != 0 or t.d != 0:
        raise RsVlmError(
            f"The raster {name} is rotated or sheared; warp it to a north-up grid first "
            "(Raster > Projections > Warp in QGIS, or gdalwarp)."
        )
    if t.a <= 0 or t.e >= 0:
        raise RsVlmError(
            f"The raster {name} is not north-up (its rows run north or its columns run west); "
            "warp it to a north-up grid first (Raster > Projections > Warp in QGIS, or gdalwarp)."
        )
    if ds.crs.is_geographic:
        north, south = t.f, t.f + t.e * ds.height
        if north > 90.0 + abs(t.e) / 2 or south < -90.0 - abs(t.e) / 2:  # half a pixel: centre-registered grids
            raise RsVlmError(
                f"The raster {name} reaches latitude {north if north > 90 else south:.6g}, beyond the pole; its "
                "georeferencing is wrong. Fix its geotransform (gdal_edit.py -a_ullr) or assign the right CRS.")
        metres = metres_per_degree(t.f + t.e * ds.height / 2.0)  # at the centre latitude
    else:
        try:
            metres = float(ds.crs.linear_units_factor[1])
        except Exception:  # unknown units: assume metres
            metres = 1.0
    return GeoReference(ds.width, ds.height, t.c, t.f, t.a, -t.e, ds.crs.to_wkt(), metres), True


def _check_rgb_bands(rgb_bands, band_count: int, name: str) -> tuple[int, int, int] | None:
    if rgb_bands is None:
        return None
    bands = tuple(int(b) for b in rgb_bands)
    if len(bands) != 3 or not all(1 <= b <= band_count for b in bands):
        raise RsVlmError(
            f"The RGB bands {rgb_bands} do not fit the raster {name}, which has {band_count} band(s); "
            f"give three band numbers between 1 and {band_count}."
        )
    return bands  # type: ignore[return-value]


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"A read needs a positive size, got {width} x {height}.")


def _inside_range(offset: float, step: float, n_out: int, n_src: int) -> tuple[int, int] | None:
    """Output pixels ``[start, stop)`` whose centres fall inside the source's ``[0, n_src)``."""
    start = max(0, math.ceil(-offset / step - 0.5))
    stop = min(n_out, math.ceil((n_src - offset) / step - 0.5))
    return (start, stop) if stop > start else None


def _area_weights(offset: float, length: float, n_out: int, n_src: int) -> tuple[np.ndarray, int, int] | None:
    """Resampling matrix by overlap area along one axis.

    Returns ``(weights, lo, hi)``: ``weights[j, i]`` is the fraction of output pixel ``j``
    covered by source pixel ``lo + i``; rows sum to the part of the pixel inside the raster.
    """
    step = length / n_out
    edges = offset + step * np.arange(n_out + 1, dtype=np.float64)
    lo = int(min(max(math.floor(edges[0]), 0), n_src))
    hi = int(min(max(math.ceil(edges[-1]), 0), n_src))
    if hi <= lo:
        return None
    src = np.arange(lo, hi, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], src[None, :] + 1) - np.maximum(edges[:-1, None], src[None, :])
    return (np.clip(overlap, 0.0, None) / step).astype(np.float32), lo, hi
