"""Large test rasters for the speed and memory benchmarks, made from the demo scene.

A raster of any size is written window by window (so making a 20k x 20k one needs little
memory): the large demo scene (NEON, 10 cm) mirrored and repeated, tiled 256 x 256,
JPEG-compressed (a 20k x 20k raster is about 100 MB), without overviews unless asked, with
the demo scene's CRS and pixel size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mirrored_scene(path: Path) -> np.ndarray:
    """(3, 2H, 2W) the scene and its mirror images, which repeat without seams."""
    import rasterio

    with rasterio.open(path) as ds:
        a = ds.read([1, 2, 3])
    top = np.concatenate([a, a[:, :, ::-1]], axis=2)
    return np.concatenate([top, top[:, ::-1, :]], axis=1)


def make_raster(out: Path, size: int, scene: Path, overviews: bool = False) -> Path:
    """Write a ``size`` x ``size`` GeoTIFF at ``out`` (kept when it exists already with that size)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    if out.exists():
        with rasterio.open(out) as ds:
            if ds.width == size and (bool(ds.overviews(1)) == overviews):
                return out
    tile = mirrored_scene(scene)
    with rasterio.open(scene) as ref:
        crs, t = ref.crs, ref.transform
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": crs,
               "transform": t, "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "jpeg",
               "photometric": "ycbcr", "jpeg_quality": 90}
    th, tw = tile.shape[1:]
    step = 2048
    with rasterio.open(out, "w", **profile) as ds:
        for row in range(0, size, step):
            for col in range(0, size, step):
                h, w = min(step, size - row), min(step, size - col)
                ys = (np.arange(row, row + h) % th)[:, None]
                xs = (np.arange(col, col + w) % tw)[None, :]
                ds.write(tile[:, ys, xs], window=Window(col, row, w, h))
        if overviews:
            ds.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    return out
