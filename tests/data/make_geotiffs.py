#!/usr/bin/env python3
"""Write the small rasters the tests read (seeded, so every run makes the same files).

In the style of torchgeo's ``tests/data/naip/data.py``: tests call :func:`make_all` into
``tmp_path``; ``python tests/data/make_geotiffs.py [FOLDER]`` writes them for a look in QGIS.

Files (keys of the dict :func:`make_all` returns):

- ``scene``: 512 x 512 RGB uint8, EPSG:26914, 0.5 m pixels. The left half is a smooth field
  (gentle shading plus low noise); the right half is "urban": roads, buildings with shadows,
  trees and textured ground.
- ``gradient``: 256 x 256 RGB uint8, EPSG:26914, 0.5 m pixels; band 1 = column, band 2 = row,
  band 3 = 128, so a read's pixel values tell where the window fell.
- ``uint16_nodata``: 128 x 128, 4 bands uint16, EPSG:26914, nodata 0 in the top-left 32 x 32 block.
- ``float32_geographic``: 100 x 60, 1 band float32, EPSG:4326 near 60 degrees north, NaN nodata
  in the bottom-right 10 x 10 block.
- ``no_crs``: a plain 64 x 48 RGB PNG (no CRS, no geotransform); band 1 = 4 * column,
  band 2 = 5 * row, band 3 = 50.
- ``not_a_raster``: a text file named ``.tif``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

UTM_ORIGIN = (500_000.0, 4_100_000.0)  # x of the left edge, y of the top edge (EPSG:26914)
PIXEL_M = 0.5


def _write(path: Path, data: np.ndarray, crs: CRS | None, transform, nodata=None, driver: str = "GTiff") -> Path:
    profile = {
        "driver": driver,
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
    }
    if driver == "GTiff":
        profile.update(crs=crs, transform=transform, nodata=nodata, tiled=False, compress="deflate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    for extra in path.parent.glob(path.name + ".aux.xml"):
        extra.unlink()
    return path


def scene_array(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """The (3, size, size) uint8 scene: smooth field left, urban right."""
    half = size // 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.empty((3, size, size), np.float32)
    # Field: one crop colour, shading that changes over tens of metres, noise of ~1 grey level.
    shade = 4.0 * np.sin(2 * np.pi * xx) + 3.0 * np.cos(2 * np.pi * yy)
    for band, base in enumerate((118.0, 140.0, 82.0)):
        img[band] = base + shade + rng.normal(0.0, 1.0, (size, size))
    # Urban: textured ground, then roads, buildings with shadows and trees on top.
    urban = img[:, :, half:]
    ground = rng.normal(0.0, 22.0, (size, half))
    for band, base in enumerate((120.0, 118.0, 105.0)):
        urban[band] = base + ground
    for pos in (40, 150, 260, 370, 470):  # horizontal and vertical roads 12 px wide
        urban[:, pos:pos + 12, :] = 70.0
        urban[:, :, pos % half:pos % half + 12] = 70.0
        urban[:, pos + 5:pos + 7, ::8] = 235.0  # dashed centre line
    for _ in range(60):
        h, w = rng.integers(10, 34, 2)
        r, c = rng.integers(0, size - h - 3), rng.integers(0, half - w - 3)
        roof = rng.integers(60, 240, 3)
        urban[:, r + 3:r + h + 3, c + 3:c + w + 3] = 30.0  # shadow to the south-east
        urban[:, r:r + h, c:c + w] = roof[:, None, None]
        urban[:, r:r + h, c + w // 2] *= 0.8  # roof ridge
    for _ in range(80):
        r, c, rad = rng.integers(0, size), rng.integers(0, half), rng.integers(3, 8)
        dist2 = (np.arange(size)[:, None] - r) ** 2 + (np.arange(half)[None, :] - c) ** 2
        crown = dist2 <= rad * rad
        for band, base in enumerate((45.0, 95.0, 40.0)):
            urban[band][crown] = base + rng.normal(0.0, 15.0, int(crown.sum()))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_scene(folder: Path, rng: np.random.Generator) -> Path:
    """512 x 512 RGB scene, EPSG:26914, 0.5 m."""
    return _write(folder / "scene.tif", scene_array(rng), CRS.from_epsg(26914), from_origin(*UTM_ORIGIN, PIXEL_M, PIXEL_M))


def make_gradient(folder: Path) -> Path:
    """256 x 256 RGB whose bands are the column and row numbers."""
    rows, cols = np.mgrid[0:256, 0:256]
    data = np.stack([cols, rows, np.full_like(cols, 128)]).astype(np.uint8)
    return _write(folder / "gradient.tif", data, CRS.from_epsg(26914), from_origin(*UTM_ORIGIN, PIXEL_M, PIXEL_M))


def make_uint16_nodata(folder: Path, rng: np.random.Generator) -> Path:
    """128 x 128 x 4 uint16 with nodata 0 in the top-left 32 x 32 block."""
    rows, cols = np.mgrid[0:128, 0:128].astype(np.float32)
    data = np.stack([1000 + 20 * cols, 1500 + 15 * rows, 2000 + 10 * (rows + cols), 3000 + 5 * cols])
    data = (data + rng.normal(0.0, 5.0, data.shape)).astype(np.uint16)
    data[:, :32, :32] = 0
    return _write(folder / "uint16_nodata.tif", data, CRS.from_epsg(26914),
                  from_origin(*UTM_ORIGIN, PIXEL_M, PIXEL_M), nodata=0)


def make_float32_geographic(folder: Path, rng: np.random.Generator) -> Path:
    """100 x 60 float32 elevation-like band, EPSG:4326 near 60 N, NaN nodata block."""
    rows, cols = np.mgrid[0:60, 0:100].astype(np.float32)
    data = (250.0 + 3.0 * cols - 2.0 * rows + rng.normal(0.0, 1.0, (60, 100))).astype(np.float32)
    data[50:, 90:] = np.nan
    return _write(folder / "float32_geographic.tif", data[None], CRS.from_epsg(4326),
                  from_origin(10.0, 60.006, 1e-4, 1e-4), nodata=float("nan"))


def make_no_crs(folder: Path) -> Path:
    """A plain PNG: no CRS, no geotransform."""
    rows, cols = np.mgrid[0:48, 0:64]
    data = np.stack([4 * cols, 5 * rows, np.full_like(cols, 50)]).astype(np.uint8)
    return _write(folder / "no_crs.png", data, None, None, driver="PNG")


def make_not_a_raster(folder: Path) -> Path:
    """A text file pretending to be a GeoTIFF."""
    path = folder / "not_a_raster.tif"
    path.write_text("This is not a raster, only text with a .tif name.\n")
    return path


def make_all(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write every test raster into ``folder``.

    Args:
        folder: Where to write (created when missing).
        seed: Seed of the random generator; the same seed gives the same files.

    Returns:
        File paths by name: scene, gradient, uint16_nodata, float32_geographic, no_crs,
        not_a_raster.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    return {
        "scene": make_scene(folder, rng),
        "gradient": make_gradient(folder),
        "uint16_nodata": make_uint16_nodata(folder, rng),
        "float32_geographic": make_float32_geographic(folder, rng),
        "no_crs": make_no_crs(folder),
        "not_a_raster": make_not_a_raster(folder),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "geotiffs"
    for name, path in make_all(out).items():
        print(f"{name}: {path}")
