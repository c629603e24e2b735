"""Turn the sample images fetched at set-up into GeoTIFFs (run by `build.py setup`).

The NEON crops ship as PNG without georeferencing.  Their file names carry the NEON AOP tile
(site YELL, tile 541000_4977000: the lower-left corner of a 1 km tile in UTM zone 12N,
EPSG:32612) and NEON's camera mosaics are 0.1 m.  The crop's offset inside the tile is not
published, so the crop is placed at the tile's north-west corner: the CRS and pixel size are
right, the position is approximate (within the named 1 km tile).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_origin

NEON_TILE = re.compile(r"_(\d{6})_(\d{7})_image")
NEON_GSD = 0.1
NEON_EPSG = 32612  # YELL (Yellowstone) lies in UTM zone 12N


def png_to_geotiff(png: Path, tif: Path) -> Path:
    """Write a tiled, compressed GeoTIFF with overviews from a NEON crop PNG."""
    match = NEON_TILE.search(png.name)
    if not match:
        raise ValueError(f"{png.name} does not carry a NEON tile name")
    easting, northing = int(match.group(1)), int(match.group(2))
    rgb = np.asarray(Image.open(png).convert("RGB")).transpose(2, 0, 1)
    transform = from_origin(easting, northing + 1000, NEON_GSD, NEON_GSD)
    profile = dict(driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3, dtype="uint8",
                   crs=f"EPSG:{NEON_EPSG}", transform=transform, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", photometric="RGB")
    tmp = tif.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(rgb)
        dst.build_overviews([2, 4, 8], Resampling.average)
        dst.update_tags(source=f"NEON AOP camera mosaic crop {png.name}, shipped in the deepforest wheel",
                        georeference="approximate: placed at the NW corner of the NEON tile named in the file")
    tmp.replace(tif)
    return tif


def main(folder: str) -> int:
    """Convert the demo PNGs in ``folder``."""
    folder = Path(folder)
    png_to_geotiff(folder / "2019_YELL_2_541000_4977000_image_crop.png", folder / "demo_scene.tif")
    png_to_geotiff(folder / "2019_YELL_2_528000_4978000_image_crop2.png", folder / "demo_scene_large.tif")
    print(f"sample GeoTIFFs written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
