"""QgsLayerSource (pixels through the layer's data provider) against the rasterio source."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import raster_layer

from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.raster import NO_CRS_WARNING, RasterioSource

PIXEL = 0.5
X0, Y0 = 500_000.0, 4_100_000.0  # top-left corner of the UTM test rasters


def _pixel_extent(col: int, row: int, cols: int, rows: int) -> Extent:
    """The extent of a block of whole pixels of the UTM test rasters."""
    return Extent(X0 + col * PIXEL, Y0 - (row + rows) * PIXEL, X0 + (col + cols) * PIXEL, Y0 - row * PIXEL)


@pytest.fixture()
def sources(qgis_app, rasters):
    """(QgsLayerSource, RasterioSource) of a test raster, by name."""
    from rs_vlm_plugin.qgis_shell.source import QgsLayerSource

    opened = []

    def make(name):
        pair = (QgsLayerSource(raster_layer(rasters[name])), RasterioSource(rasters[name]))
        opened.append(pair[1])
        return pair

    yield make
    for source in opened:
        source.close()


@pytest.mark.parametrize("name", ["scene", "gradient", "uint16_nodata", "float32_geographic"])
def test_georeference_matches_rasterio(sources, name):
    from qgis.core import QgsCoordinateReferenceSystem

    qgs, rio = sources(name)
    a, b = qgs.georef, rio.georef
    assert (a.width, a.height) == (b.width, b.height)
    assert a.origin_x == pytest.approx(b.origin_x) and a.origin_y == pytest.approx(b.origin_y)
    assert a.pixel_width == pytest.approx(b.pixel_width) and a.pixel_height == pytest.approx(b.pixel_height)
    assert a.metres_per_unit == pytest.approx(b.metres_per_unit, rel=1e-3)
    assert QgsCoordinateReferenceSystem.fromWkt(a.crs_wkt) == QgsCoordinateReferenceSystem.fromWkt(b.crs_wkt)
    assert (qgs.band_count, qgs.source_dtype) == (rio.band_count, rio.source_dtype)
    assert qgs.name == name  # the layer's name (the file's stem here)


@pytest.mark.parametrize("name", ["scene", "gradient", "uint16_nodata"])
def test_native_resolution_sub_extent_reads_the_same_pixels(sources, name):
    qgs, rio = sources(name)
    extent = _pixel_extent(17, 9, 61, 45)
    data_q, valid_q = qgs.read_bands(extent, 61, 45)
    data_r, valid_r = rio.read_bands(extent, 61, 45)
    assert data_q.dtype == np.float32 and data_q.shape == (qgs.band_count, 45, 61)
    np.testing.assert_array_equal(valid_q, valid_r)
    np.testing.assert_array_equal(np.where(valid_q, data_q, 0), np.where(valid_r, data_r, 0))
    np.testing.assert_array_equal(qgs.read(extent, 61, 45), rio.read(extent, 61, 45))


def test_gradient_pixels_say_where_the_window_fell(sources):
    qgs, _ = sources("gradient")
    data, valid = qgs.read_bands(_pixel_extent(100, 40, 8, 4), 8, 4)
    assert valid.all()
    np.testing.assert_array_equal(data[0], np.tile(np.arange(100, 108), (4, 1)))  # band 1 = column
    np.testing.assert_array_equal(data[1], np.repeat(np.arange(40, 44)[:, None], 8, axis=1))  # band 2 = row


def test_reads_reaching_outside_the_raster_are_masked(sources):
    qgs, rio = sources("gradient")
    extent = _pixel_extent(-10, 250, 20, 12)  # 10 columns west of the raster, 6 rows below it
    data_q, valid_q = qgs.read_bands(extent, 20, 12)
    data_r, valid_r = rio.read_bands(extent, 20, 12)
    np.testing.assert_array_equal(valid_q, valid_r)
    assert valid_q[:6, 10:].all() and not valid_q[:, :10].any() and not valid_q[6:].any()
    np.testing.assert_array_equal(data_q[:, valid_q], data_r[:, valid_r])
    nothing = _pixel_extent(400, 0, 10, 10)
    assert not qgs.read_bands(nothing, 10, 10)[1].any()


def test_decimated_reads_average_like_rasterio(sources):
    """Reads 4x coarser than native average the source pixels rather than pick one of them.

    rasterio averages exact 4 x 4 blocks; QGIS 3.22's provider resampling ("Average") weighs
    its window a little differently, so the two agree much better than a nearest-neighbour
    decimation does, but not exactly.
    """
    qgs, rio = sources("scene")
    extent = rio.georef.extent
    averaged = rio.read_bands(extent, 128, 128)[0]
    nearest = rio.read_bands(extent, 512, 512)[0][:, 2::4, 2::4]
    got = qgs.read_bands(extent, 128, 128)[0]
    assert np.abs(got - averaged).mean() < 0.6 * np.abs(nearest - averaged).mean()


def test_nodata_value_is_masked(sources):
    qgs, rio = sources("uint16_nodata")
    data, valid = qgs.read_bands(_pixel_extent(0, 0, 64, 64), 64, 64)
    assert not valid[:32, :32].any() and valid[32:, 32:].all()
    _, valid_r = rio.read_bands(_pixel_extent(0, 0, 64, 64), 64, 64)
    np.testing.assert_array_equal(valid, valid_r)


def test_nan_nodata_and_geographic_units(sources):
    qgs, rio = sources("float32_geographic")
    g = qgs.georef
    data, valid = qgs.read_bands(g.extent, g.width, g.height)
    assert not valid[50:, 90:].any() and valid[:50].all()
    assert np.isfinite(data[:, valid]).all()
    assert g.metres_per_unit == pytest.approx(111_320 * np.cos(np.radians(60.003)), rel=1e-3)


def test_user_nodata_ranges_are_honoured(qgis_app, rasters):
    from qgis.core import QgsRasterRange

    from rs_vlm_plugin.qgis_shell.source import QgsLayerSource

    layer = raster_layer(rasters["gradient"])
    layer.dataProvider().setUserNoDataValue(1, [QgsRasterRange(0, 9)])  # columns 0-9 of band 1
    source = QgsLayerSource(layer)
    _, valid = source.read_bands(_pixel_extent(0, 0, 20, 4), 20, 4)
    assert not valid[:, :10].any() and valid[:, 10:].all()


def test_raster_without_crs_warns(qgis_app, rasters):
    from rs_vlm_plugin.qgis_shell.source import QgsLayerSource

    source = QgsLayerSource(raster_layer(rasters["no_crs"]))
    source.balance_bytes = False  # compare raw pixel values
    assert source.georef.crs_wkt is None
    assert NO_CRS_WARNING in source.warnings
    assert (source.georef.width, source.georef.height) == (64, 48)
    image = source.read(source.georef.extent, 64, 48)
    assert image.shape == (48, 64, 3)
    np.testing.assert_array_equal(image[0, :, 0], 4 * np.arange(64))  # band 1 = 4 * column
    np.testing.assert_array_equal(image[:, 0, 1], 5 * np.arange(48))  # band 2 = 5 * row


def test_reads_from_a_worker_thread_match_the_main_thread(sources):
    qgs, _ = sources("scene")
    extent = _pixel_extent(200, 100, 224, 224)
    expected = qgs.read(extent, 224, 224)
    got = {}

    def work():
        got["image"] = qgs.read(extent, 224, 224)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(30)
    np.testing.assert_array_equal(got["image"], expected)


def test_provider_is_a_clone(qgis_app, rasters):
    from rs_vlm_plugin.qgis_shell.source import QgsLayerSource

    layer = raster_layer(rasters["scene"])
    source = QgsLayerSource(layer)
    assert source.provider is not layer.dataProvider()
    del layer  # the source keeps working after the layer is gone
    assert source.read(source.georef.extent, 32, 32).shape == (32, 32, 3)


def test_invalid_layer_is_a_sentence(qgis_app, tmp_path):
    from qgis.core import QgsRasterLayer

    from rs_vlm_plugin.core.errors import RsVlmError
    from rs_vlm_plugin.qgis_shell.source import QgsLayerSource

    with pytest.raises(RsVlmError, match="not valid"):
        QgsLayerSource(QgsRasterLayer(str(tmp_path / "missing.tif"), "missing", "gdal"))


def _xyz_tiles(folder) -> str:
    """A local XYZ tile set of zoom 1: four solid tiles (NW red, NE green, SW blue, SE yellow)."""
    from qgis.PyQt.QtGui import QColor, QImage

    colours = {(0, 0): (255, 0, 0), (1, 0): (0, 255, 0), (0, 1): (0, 0, 255), (1, 1): (255, 255, 0)}
    for (x, y), colour in colours.items():
        (folder / "1" / str(x)).mkdir(parents=True, exist_ok=True)
        image = QImage(256, 256, QImage.Format_ARGB32)
        image.fill(QColor(*colour))
        assert image.save(str(folder / "1" / str(x) / f"{y}.png"))
    return f"type=xyz&url=file://{folder}/{{z}}/{{x}}/{{y}}.png&zmin=1&zmax=1"


def test_xyz_layer_reads_colours_with_a_nominal_gsd(qgis_app, tmp_path):
    """A web layer: one ARGB band, no native pixel size (XYZ tiles from local files)."""
    from qgis.core import QgsRasterLayer

    from rs_vlm_plugin.qgis_shell.source import NOMINAL_GSD_M, QgsLayerSource

    layer = QgsRasterLayer(_xyz_tiles(tmp_path), "xyz", "wms")
    if not layer.isValid():
        pytest.skip("the WMS/XYZ provider is not available")
    source = QgsLayerSource(layer)
    assert source.band_count == 3 and source.source_dtype == "uint8"
    assert source.georef.native_gsd_m == pytest.approx(NOMINAL_GSD_M, rel=1e-6)
    assert any("no native pixel size" in w for w in source.warnings)
    assert QgsLayerSource(layer, nominal_gsd_m=2.0).georef.native_gsd_m == pytest.approx(2.0, rel=1e-6)

    half = layer.extent().xMaximum()  # the world in EPSG:3857 is centred on (0, 0)
    margin = half / 10
    north_west = Extent(-half + margin, margin, -margin, half - margin)
    south_east = Extent(margin, -half + margin, half - margin, -margin)
    data, valid = source.read_bands(north_west, 8, 8)
    assert valid.all()
    np.testing.assert_array_equal(source.read(north_west, 8, 8)[4, 4], [255, 0, 0])
    np.testing.assert_array_equal(source.read(south_east, 8, 8)[4, 4], [255, 255, 0])
