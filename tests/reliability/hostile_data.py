"""Seeded hostile inputs for the reliability suite: rasters, model bundles and indexes that are
broken in the ways real files break (cut short, overwritten in part, all nodata, too small).

:func:`make_rasters` and :func:`make_models` write into a folder and return the paths by name;
the same seed gives the same files. Everything is a real file read by the real readers (GDAL,
onnxruntime, SQLite); nothing is mocked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = (500_000.0, 4_100_000.0)
PIXEL_M = 0.5


def _scene_array(rng: np.random.Generator, size: int) -> np.ndarray:
    spec = importlib.util.spec_from_file_location("make_geotiffs", ROOT / "tests" / "data" / "make_geotiffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scene_array(rng, size)


def write_tif(path: Path, data: np.ndarray, nodata=None, tiled: bool = False, overviews: tuple[int, ...] = (),
              crs: CRS | None = CRS.from_epsg(26914)) -> Path:
    """A GeoTIFF of ``(bands, rows, cols)`` data in EPSG:26914 at 0.5 m (deflate; optionally tiled 128 x 128)."""
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": crs, "transform": from_origin(*ORIGIN, PIXEL_M, PIXEL_M),
               "nodata": nodata, "compress": "deflate", "tiled": tiled}
    if tiled:
        profile.update(blockxsize=128, blockysize=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if overviews:
                from rasterio.enums import Resampling

                dst.build_overviews(list(overviews), Resampling.average)
    for extra in path.parent.glob(path.name + ".aux.xml"):
        extra.unlink()
    return path


def corrupt_full_resolution_tiles(path: Path, count: int, seed: int) -> Path:
    """Overwrite the last ``count`` full-resolution tiles of band 1..n (not the overviews) with noise.

    The header and the overviews stay intact, so the file opens and its overview reads; only
    reads of the south-east part at full resolution fail (a file damaged on disk).
    """
    from osgeo import gdal

    ds = gdal.Open(str(path))
    band = ds.GetRasterBand(1)
    nx, ny = band.XSize // 128, band.YSize // 128
    spans = []
    for b in range(1, ds.RasterCount + 1):
        band = ds.GetRasterBand(b)
        for j in range(ny):
            for i in range(nx):
                offset = band.GetMetadataItem(f"BLOCK_OFFSET_{i}_{j}", "TIFF")
                size = band.GetMetadataItem(f"BLOCK_SIZE_{i}_{j}", "TIFF")
                if offset and size:
                    spans.append((j * nx + i, int(offset), int(size)))
    ds = None
    raw = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    last = sorted({k for k, _, _ in spans})[-count:]
    for k, offset, size in spans:
        if k in last:
            raw[offset:offset + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(raw))
    return path


def make_rasters(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write the hostile rasters; returns them by name.

    - ``scene``: 256 x 256 RGB uint8 (field and town), the well-formed baseline.
    - ``large``: 1024 x 1024, the same kind of scene: DRIS plans more than one batch of tiles.
    - ``damaged``: 2048 x 2048 tiled RGB with overviews whose last 24 full-resolution tiles are
      overwritten: it opens and plans, and fails when the busy south-east is read at full resolution.
    - ``truncated``: the first 600 bytes of a GeoTIFF.
    - ``empty``: a 0-byte ``.tif``.
    - ``text``: a text file named ``.tif``.
    - ``all_nodata``: 64 x 64 uint8, every pixel the nodata value 0.
    - ``all_nan``: 64 x 64 float32, every pixel NaN (nodata NaN).
    - ``half_nodata``: 256 x 256 RGB, the western 132 columns nodata 0 (the western regions show nothing).
    - ``tiny``: 5 x 5 RGB.
    - ``strip``: 3 x 600 RGB (3 columns).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {"scene": write_tif(folder / "scene.tif", _scene_array(rng, 256)),
           "large": write_tif(folder / "large.tif", _scene_array(rng, 1024))}
    big = np.full((3, 2048, 2048), 120, np.uint8)
    big[:, 1024:, 1024:] = rng.integers(0, 256, (3, 1024, 1024), dtype=np.uint8)  # busy south-east
    damaged = write_tif(folder / "damaged.tif", big, tiled=True, overviews=(2, 4, 8))
    out["damaged"] = corrupt_full_resolution_tiles(damaged, 24, seed)
    whole = (folder / "scene.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(whole[:600])
    out["truncated"] = folder / "truncated.tif"
    (folder / "empty.tif").write_bytes(b"")
    out["empty"] = folder / "empty.tif"
    (folder / "text.tif").write_text("not a raster\n")
    out["text"] = folder / "text.tif"
    out["all_nodata"] = write_tif(folder / "all_nodata.tif", np.zeros((1, 64, 64), np.uint8), nodata=0)
    out["all_nan"] = write_tif(folder / "all_nan.tif", np.full((1, 64, 64), np.nan, np.float32), nodata=float("nan"))
    half = _scene_array(rng, 256)
    half[:, :, :132] = 0  # the western regions and their resampling margin
    out["half_nodata"] = write_tif(folder / "half_nodata.tif", half, nodata=0)
    out["tiny"] = write_tif(folder / "tiny.tif", rng.integers(0, 256, (3, 5, 5), dtype=np.uint8))
    out["strip"] = write_tif(folder / "strip.tif", rng.integers(0, 256, (3, 600, 3), dtype=np.uint8))
    (folder / "a_folder.tif").mkdir(exist_ok=True)
    out["a_folder"] = folder / "a_folder.tif"
    out.update(make_odd_rasters(folder / "odd", _scene_array(rng, 256)))
    return out


def _write_geographic(path: Path, data: np.ndarray, west: float, north: float, dx: float, dy: float) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": CRS.from_epsg(4326), "transform": from_origin(west, north, dx, dy)}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _vrt(path: Path, width: int, height: int, bands: str) -> Path:
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:26914</SRS>'
                    f'<GeoTransform>{ORIGIN[0]}, {PIXEL_M}, 0, {ORIGIN[1]}, 0, {-PIXEL_M}</GeoTransform>{bands}'
                    '</VRTDataset>', encoding="utf-8")
    return path


def make_odd_rasters(folder: Path, scene: np.ndarray) -> dict[str, Path]:
    """Well-formed files of unusual kinds, and files that GDAL reads in unusual ways.

    - ``renamed_png``: a PNG (no CRS, no geotransform) named ``.tif``.
    - ``zero_vrt``: a VRT of 0 x 0 pixels.
    - ``uint16``: the scene as 12-bit values in uint16.
    - ``nan_patches``: the scene as float32 with a NaN block and no nodata value.
    - ``palette``: one uint8 band of 8 classes with a colour table (index 7 transparent).
    - ``bands12``: 12 bands uint16 (a multispectral product).
    - ``no_crs``: a GeoTIFF with a geotransform and no CRS.
    - ``rotated``: a GeoTIFF whose geotransform rotates the grid.
    - ``polar_globe``: EPSG:4326 covering the whole globe, -180..180 x -90..90.
    - ``north_cap``: EPSG:4326, 85..90 degrees north (its top edge is the pole).
    - ``beyond_pole``: EPSG:4326 whose top edge is at 95 degrees north.
    - ``antimeridian``: EPSG:4326 from 179.99 to 180.0156 degrees east (across the antimeridian).
    - ``huge_vrt``: a VRT of 200,000 x 200,000 pixels holding the scene at its centre.
    - ``self_vrt``: a VRT whose only source is itself.
    - ``raster_gpkg``: the scene as a GeoPackage raster (an input that is a ``.gpkg``).
    - ``unicode``: the scene at a path with spaces and non-ASCII letters.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(folder / "renamed.png", "w", driver="PNG", width=256, height=256, count=3,
                           dtype="uint8") as dst:
            dst.write(scene)
    os.replace(folder / "renamed.png", folder / "renamed_png.tif")
    out["renamed_png"] = folder / "renamed_png.tif"
    out["zero_vrt"] = _vrt(folder / "zero.vrt", 0, 0, '<VRTRasterBand dataType="Byte" band="1"/>')
    out["uint16"] = write_tif(folder / "uint16.tif", scene.astype(np.uint16) * 16)
    patches = scene.astype(np.float32)
    patches[:, :48, :48] = np.nan
    out["nan_patches"] = write_tif(folder / "nan_patches.tif", patches)
    path = folder / "palette.tif"
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8",
                       crs=CRS.from_epsg(26914), transform=from_origin(*ORIGIN, PIXEL_M, PIXEL_M)) as dst:
        dst.write((scene[0] // 32)[None])
        dst.write_colormap(1, {i: (i * 36 % 256, 255 - i * 30, i * 17 % 256, 0 if i == 7 else 255) for i in range(8)})
    out["palette"] = path
    out["bands12"] = write_tif(folder / "bands12.tif",
                               np.random.default_rng(3).integers(0, 4000, (12, 128, 128)).astype(np.uint16))
    out["no_crs"] = write_tif(folder / "no_crs.tif", scene, crs=None)
    path = folder / "rotated.tif"
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
                       crs=CRS.from_epsg(26914),
                       transform=rasterio.Affine(0.5, 0.1, ORIGIN[0], 0.1, -0.5, ORIGIN[1])) as dst:
        dst.write(scene)
    out["rotated"] = path
    out["polar_globe"] = _write_geographic(folder / "polar_globe.tif", scene, -180, 90, 360 / 256, 180 / 256)
    out["north_cap"] = _write_geographic(folder / "north_cap.tif", scene, 10, 90, 5 / 256, 5 / 256)
    out["beyond_pole"] = _write_geographic(folder / "beyond_pole.tif", scene, 0, 95, 0.05, 0.05)
    out["antimeridian"] = _write_geographic(folder / "antimeridian.tif", scene, 179.99, 10, 1e-4, 1e-4)
    write_tif(folder / "centre.tif", scene)
    sources = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename relativeToVRT="1">centre.tif'
        f'</SourceFilename><SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="256" ySize="256"/>'
        '<DstRect xOff="100000" yOff="100000" xSize="256" ySize="256"/></SimpleSource></VRTRasterBand>'
        for b in (1, 2, 3))
    out["huge_vrt"] = _vrt(folder / "huge.vrt", 200_000, 200_000, sources)
    out["self_vrt"] = _vrt(folder / "self.vrt", 256, 256,
                           '<VRTRasterBand dataType="Byte" band="1"><SimpleSource><SourceFilename relativeToVRT="1">'
                           'self.vrt</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>')
    path = folder / "raster.gpkg"
    with rasterio.open(path, "w", driver="GPKG", width=256, height=256, count=3, dtype="uint8",
                       crs=CRS.from_epsg(26914), transform=from_origin(*ORIGIN, PIXEL_M, PIXEL_M)) as dst:
        dst.write(scene)
    out["raster_gpkg"] = path
    named = folder / "räster ünï 東京 with spaces"
    named.mkdir(exist_ok=True)
    out["unicode"] = write_tif(named / "scène 1 (copy).tif", scene)
    for extra in folder.rglob("*.aux.xml"):
        extra.unlink()
    return out


def pickle_npy(path: Path, marker: Path) -> Path:
    """An ``.npy`` holding an object array whose unpickling would create ``marker`` (code run on load)."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    np.save(path, np.array([Payload()], dtype=object), allow_pickle=True)
    return path


def package_bytes(members: dict[str, bytes], sums: dict[str, bytes] | None = None, links: tuple[str, ...] = (),
                  folder: str = "tiny") -> dict[str, bytes]:
    """Members of a model package: ``members`` under ``folder/`` plus a SHA256SUMS of ``sums`` (default
    the members); ``links`` are added as symbolic-link members."""
    import hashlib

    listed = members if sums is None else sums
    text = "".join(f"{hashlib.sha256(v).hexdigest()}  {k}\n" for k, v in sorted(listed.items())).encode()
    return {**{f"{folder}/{k}": v for k, v in members.items()}, f"{folder}/SHA256SUMS": text,
            **{f"@link:{folder}/{k}": b"/etc/passwd" for k in links}}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip of ``members`` (names starting ``@link:`` become symbolic-link members)."""
    import stat
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if name.startswith("@link:"):
                info = zipfile.ZipInfo(name[len("@link:"):])
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, data)
            else:
                zf.writestr(name, data)
    return path


def make_packages(folder: Path) -> dict[str, Path]:
    """Model packages (zips), good and hostile; a tiny bundle of a manifest and 64 kB of weights.

    - ``pkg_good``: a well-formed package.
    - ``pkg_traversal``: a member ``tiny/../escaped`` (path traversal).
    - ``pkg_absolute``: a member ``/tmp/rsvlm-absolute/manifest.json``.
    - ``pkg_symlink``: a member that is a symbolic link to /etc/passwd.
    - ``pkg_bomb``: a 200 MB member of zeros packed into 0.2 MB.
    - ``pkg_bad_sum``: a member whose SHA-256 differs from SHA256SUMS.
    - ``pkg_cut``: the good package cut in half.
    - ``pkg_bad_crc``: the good package with a byte of a member's data flipped.
    - ``pkg_manifest_not_json``, ``pkg_manifest_list``, ``pkg_manifest_not_utf8``: malformed manifests.
    """
    import json

    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.dumps({"format": "rs-vlm-bundle", "format_version": 2, "name": "tiny"}).encode()
    weights = np.random.default_rng(5).integers(0, 256, 65536, dtype=np.uint8).tobytes()
    good = {"manifest.json": manifest, "image_encoder.onnx": weights}
    out = {"pkg_good": write_zip(folder / "good.zip", package_bytes(good))}
    out["pkg_traversal"] = write_zip(folder / "traversal.zip", {**package_bytes(good), "tiny/../escaped": b"x"})
    out["pkg_absolute"] = write_zip(folder / "absolute.zip",
                                    {**package_bytes(good), "/tmp/rsvlm-absolute/manifest.json": manifest})
    out["pkg_symlink"] = write_zip(folder / "symlink.zip",
                                   package_bytes(good, {**good, "link": b"/etc/passwd"}, links=("link",)))
    out["pkg_bomb"] = write_zip(folder / "bomb.zip", package_bytes({**good, "image_encoder.onnx": bytes(200 << 20)}))
    out["pkg_bad_sum"] = write_zip(folder / "bad_sum.zip",
                                   package_bytes({**good, "image_encoder.onnx": weights[:-1] + b"!"}, good))
    data = out["pkg_good"].read_bytes()
    (folder / "cut.zip").write_bytes(data[:len(data) // 2])
    out["pkg_cut"] = folder / "cut.zip"
    raw = bytearray(data)
    raw[data.index(b"tiny/image_encoder.onnx") + 200] ^= 0xFF  # inside the member's deflated data
    (folder / "bad_crc.zip").write_bytes(bytes(raw))
    out["pkg_bad_crc"] = folder / "bad_crc.zip"
    for name, text in (("not_json", b'{"format": "rs-vlm-bundle",'), ("list", b"[]"), ("not_utf8", b'{"a": "\xff"}')):
        out[f"pkg_manifest_{name}"] = write_zip(folder / f"manifest_{name}.zip",
                                                package_bytes({**good, "manifest.json": text}))
    return out


def _bundle_copy(source: Path, target: Path, real: tuple[str, ...] = ()) -> Path:
    """A bundle folder whose files link to ``source``'s, except ``real`` ones, which are copied."""
    target.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file():
            if file.name in real:
                shutil.copyfile(file, target / file.name)
            else:
                os.symlink(file, target / file.name)
    return target


def make_models(folder: Path, bundle_dir: Path) -> dict[str, Path]:
    """Broken copies of the real bundle (its big files linked, the broken ones real files).

    - ``truncated_image``: image_encoder.onnx cut to half its size.
    - ``garbage_text``: text_encoder.onnx replaced by bytes that are not ONNX.
    - ``bad_manifest``: manifest.json that is not JSON.
    - ``reexported``: the same model with another manifest (another fingerprint).
    - ``copy``: an intact copy (its manifest a real file), for outputs aimed at model files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    image = _bundle_copy(bundle_dir, folder / "truncated_image", real=("manifest.json",))
    (image / "image_encoder.onnx").unlink()
    data = (bundle_dir / "image_encoder.onnx").read_bytes()
    (image / "image_encoder.onnx").write_bytes(data[:len(data) // 2])
    out["truncated_image"] = image
    text = _bundle_copy(bundle_dir, folder / "garbage_text", real=("manifest.json",))
    (text / "text_encoder.onnx").unlink()
    (text / "text_encoder.onnx").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["garbage_text"] = text
    bad = _bundle_copy(bundle_dir, folder / "bad_manifest", real=("manifest.json",))
    (bad / "manifest.json").write_text('{"format": "rs-vlm-bundle", "format_version": 2,', encoding="utf-8")
    out["bad_manifest"] = bad
    again = _bundle_copy(bundle_dir, folder / "reexported", real=("manifest.json",))
    manifest = json.loads((again / "manifest.json").read_text(encoding="utf-8"))
    manifest["description"] = manifest.get("description", "") + " (exported again)"
    (again / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    out["reexported"] = again
    out["copy"] = _bundle_copy(bundle_dir, folder / "copy", real=("manifest.json",))
    return out


def make_broken_indexes(index: Path, folder: Path, seed: int = 0) -> dict[str, Path]:
    """Damaged copies of a real index file.

    - ``index_cut``: the file cut to 60 % of its size.
    - ``index_bad_blob``: one embeddings BLOB replaced by random bytes.
    - ``index_short_column``: the ``depth`` column cut to one row.
    - ``index_no_embeddings``: the embeddings table dropped.
    - ``index_no_meta``: the metadata table dropped (a GeoPackage, but no index).
    - ``index_bad_meta``: a metadata value that is not JSON.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    data = index.read_bytes()
    out["index_cut"] = folder / "index_cut.gpkg"
    out["index_cut"].write_bytes(data[:int(len(data) * 0.6)])

    def edited(name: str, *sql: tuple) -> Path:
        path = folder / f"{name}.gpkg"
        shutil.copyfile(index, path)
        db = sqlite3.connect(path)
        with db:
            for statement in sql:
                db.execute(*statement)
        db.close()
        out[name] = path
        return path

    edited("index_bad_blob", ("UPDATE rsvlm_index_embeddings SET data = ? WHERE name = 'embedding' AND chunk = 0",
                              (rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),)))
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros(1, np.int16))
    edited("index_short_column", ("UPDATE rsvlm_index_embeddings SET data = ? WHERE name = 'depth'",
                                  (buffer.getvalue(),)))
    edited("index_no_embeddings", ("DROP TABLE rsvlm_index_embeddings",))
    edited("index_no_meta", ("DROP TABLE rsvlm_index_meta",))
    edited("index_bad_meta", ("UPDATE rsvlm_index_meta SET value = '{not json' WHERE key = 'format'",))
    return out
