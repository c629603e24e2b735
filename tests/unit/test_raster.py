"""Raster reading: window placement, outside/nodata fill, scaling, CRS handling, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from make_geotiffs import PIXEL_M, UTM_ORIGIN, make_all  # noqa: E402

from rs_vlm_plugin.core.errors import RsVlmError  # noqa: E402
from rs_vlm_plugin.core.geometry import Extent, GeoReference, metres_per_degree  # noqa: E402
from rs_vlm_plugin.core.raster import NO_CRS_WARNING, ArraySource, RasterioSource, open_raster  # noqa: E402

X0, Y0 = UTM_ORIGIN


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return make_all(tmp_path_factory.mktemp("rasters"), seed=0)


def pixel_extent(col0: float, row0: float, col1: float, row1: float) -> Extent:
    """Map extent of pixel columns [col0, col1) and rows [row0, row1) of the UTM test grid."""
    return Extent(X0 + col0 * PIXEL_M, Y0 - row1 * PIXEL_M, X0 + col1 * PIXEL_M, Y0 - row0 * PIXEL_M)


def gradient_array_source() -> ArraySource:
    rows, cols = np.mgrid[0:256, 0:256]
    data = np.stack([cols, rows, np.full_like(cols, 128)]).astype(np.uint8)
    georef = GeoReference(256, 256, X0, Y0, PIXEL_M, PIXEL_M, "EPSG:26914", 1.0)
    source = ArraySource(data, georef, name="gradient")
    source.balance_bytes = False  # these tests check pixel values, not colour balance
    return source


@pytest.fixture(params=["rasterio", "array"])
def gradient(request, files):
    if request.param == "rasterio":
        with open_raster(files["gradient"]) as src:
            src.balance_bytes = False
            yield src
    else:
        yield gradient_array_source()


def test_georeference_from_the_transform(files):
    with open_raster(files["gradient"]) as src:
        g = src.georef
        assert (g.width, g.height, g.origin_x, g.origin_y) == (256, 256, X0, Y0)
        assert g.native_gsd == PIXEL_M and g.native_gsd_m == PIXEL_M
        assert "26914" in g.crs_wkt or "UTM zone 14N" in g.crs_wkt
        assert src.band_count == 3 and src.source_dtype == "uint8" and src.name == "gradient"
        assert src.warnings == []


def test_window_placement_at_native_resolution(gradient):
    rgb = gradient.read(pixel_extent(10, 20, 74, 84), 64, 64)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[0, :, 0], np.arange(10, 74))  # red = column
    assert np.array_equal(rgb[:, 0, 1], np.arange(20, 84))  # green = row
    assert np.all(rgb[..., 2] == 128)


def test_decimated_read_averages(gradient):
    rgb = gradient.read(gradient.georef.extent, 128, 128)
    expected = 2 * np.arange(128) + 0.5  # mean of columns 2j and 2j+1
    assert np.abs(rgb[5, :, 0] - expected).max() <= 0.5 + 1e-6
    assert np.abs(rgb[:, 5, 1] - expected).max() <= 0.5 + 1e-6


def test_finer_read_stays_in_place(gradient):
    rgb = gradient.read(pixel_extent(100, 100, 108, 108), 32, 32)
    assert abs(int(rgb[0, 0, 0]) - 100) <= 1 and abs(int(rgb[0, -1, 0]) - 107) <= 1
    assert np.all(np.diff(rgb[0, :, 0].astype(int)) >= 0)


def test_outside_the_raster_is_invalid_and_black(gradient):
    extent = pixel_extent(-32, -16, 32, 48)  # half to the west, a quarter to the north
    data, valid = gradient.read_bands(extent, 64, 64)
    assert data.shape == (3, 64, 64) and data.dtype == np.float32
    assert not valid[:, :32].any() and not valid[:16, :].any()
    assert valid[16:, 32:].all()
    rgb = gradient.read(extent, 64, 64)
    assert np.all(rgb[:, :32] == 0) and np.all(rgb[:16] == 0)
    assert np.array_equal(rgb[16, 32:, 0], np.arange(0, 32))


def test_entirely_outside_reads_empty(gradient):
    data, valid = gradient.read_bands(pixel_extent(1000, 1000, 1064, 1064), 16, 16)
    assert not valid.any() and not data.any()


def test_byte_scene_passes_through_unchanged(files):
    import rasterio

    with rasterio.open(files["scene"]) as ds:
        original = ds.read().transpose(1, 2, 0)
    with open_raster(files["scene"]) as src:
        src.balance_bytes = False
        assert np.array_equal(src.read(src.georef.extent, 512, 512), original)
        assert src.warnings == []


def test_byte_scene_is_colour_balanced_by_default(files):
    import rasterio

    with rasterio.open(files["scene"]) as ds:
        original = ds.read().astype(np.float32)
    with open_raster(files["scene"]) as src:
        balanced = src.read(src.georef.extent, 512, 512).astype(np.float32)
        assert src.warnings == []  # balancing 8-bit data is the normal path, not a warning
    for band in range(3):
        lo, hi = np.percentile(original[band], (2, 98))
        expected = np.clip((original[band] - lo) * 255.0 / (hi - lo), 0, 255)
        assert np.abs(balanced[..., band] - expected).max() <= 1.0
        assert np.percentile(balanced[..., band], 98) >= 250


def test_nodata_is_invalid_and_uint16_is_stretched(files):
    with open_raster(files["uint16_nodata"]) as src:
        assert src.band_count == 4 and src.source_dtype == "uint16"
        data, valid = src.read_bands(src.georef.extent, 128, 128)
        assert not valid[:32, :32].any() and valid[32:].all() and valid[:, 32:].all()
        coarse = src.read_bands(src.georef.extent, 64, 64)[1]
        assert not coarse[:16, :16].any() and coarse[16:].all()
        rgb = src.read(src.georef.extent, 128, 128)
        assert np.all(rgb[:32, :32] == 0)
        inside = rgb[valid]
        assert inside.min() <= 10 and inside.max() >= 245  # 2nd-98th percentiles span 0-255
        src.read(src.georef.extent, 32, 32)
        stretch_warnings = [w for w in src.warnings if "not 8-bit" in w]
        assert len(stretch_warnings) == 1 and "percentile" in stretch_warnings[0]
        assert NO_CRS_WARNING not in src.warnings


def test_rgb_bands_choice(files):
    with open_raster(files["uint16_nodata"], rgb_bands=(4, 3, 2)) as src:
        assert src.display_bands == (3, 2, 1)
        assert src.read(src.georef.extent, 16, 16).shape == (16, 16, 3)
    with pytest.raises(RsVlmError, match="between 1 and 4"):
        open_raster(files["uint16_nodata"], rgb_bands=(5, 1, 1))


def test_geographic_float_single_band(files):
    with open_raster(files["float32_geographic"]) as src:
        g = src.georef
        assert src.source_dtype == "float32" and src.band_count == 1
        centre_lat = g.extent.center[1]
        assert g.metres_per_unit == pytest.approx(metres_per_degree(centre_lat))
        assert g.native_gsd_m == pytest.approx(1e-4 * 111_320 * 0.5, rel=0.01)
        data, valid = src.read_bands(g.extent, 100, 60)
        assert not valid[50:, 90:].any() and valid[:50].all()
        rgb = src.read(g.extent, 100, 60)
        assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        assert np.all(rgb[50:, 90:] == 0)
        assert any("not 8-bit (float32)" in w for w in src.warnings)


def test_no_crs_png_is_read_north_up_in_pixel_space(files):
    with open_raster(files["no_crs"]) as src:
        src.balance_bytes = False
        g = src.georef
        assert g.crs_wkt is None and g.metres_per_unit == 1.0
        assert g.extent == Extent(0, 0, 64, 48)
        assert src.warnings == [NO_CRS_WARNING]
        top = src.read(Extent(0, 40, 64, 48), 64, 8)  # the top 8 rows have the highest y
        assert np.array_equal(top[:, 0, 1], 5 * np.arange(8))
        assert np.array_equal(top[0, :, 0], 4 * np.arange(64))


def test_array_source_matches_rasterio(files):
    array_source = gradient_array_source()
    with open_raster(files["gradient"]) as src:
        src.balance_bytes = False
        for extent, size in [(src.georef.extent, (64, 64)), (pixel_extent(3, 5, 131, 69), (64, 32))]:
            a = array_source.read(extent, *size).astype(int)
            b = src.read(extent, *size).astype(int)
            assert np.abs(a - b).max() <= 1


def test_array_source_nodata_and_pixel_space():
    data = np.arange(16, dtype=np.uint16).reshape(1, 4, 4)
    src = ArraySource(data, nodata=0)
    assert src.georef.extent == Extent(0, 0, 4, 4) and NO_CRS_WARNING in src.warnings
    values, valid = src.read_bands(src.georef.extent, 4, 4)
    assert not valid[0, 0] and valid.sum() == 15
    assert np.array_equal(values[0, 1], [4, 5, 6, 7])


def test_missing_file_says_check_the_path(tmp_path):
    with pytest.raises(RsVlmError, match="does not exist; check the path"):
        open_raster(tmp_path / "nowhere.tif")


def test_not_a_raster_says_what_to_give(files):
    with pytest.raises(RsVlmError, match="GeoTIFF, VRT, JPEG or PNG"):
        open_raster(files["not_a_raster"])


def test_context_manager_closes(files):
    with RasterioSource(files["gradient"]) as src:
        pass
    assert src._ds.closed
