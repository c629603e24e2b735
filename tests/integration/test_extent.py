"""Canvas extents in the raster's CRS (QgsCoordinateTransform with the project's context)."""

from __future__ import annotations

import pytest
from conftest import raster_layer

from rs_vlm_plugin.core.errors import RsVlmError


@pytest.fixture()
def canvas(qgis_app):
    from qgis.gui import QgsMapCanvas

    widget = QgsMapCanvas()
    widget.resize(400, 300)
    yield widget
    widget.deleteLater()


def test_canvas_extent_in_the_layer_crs(canvas, rasters):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle

    from rs_vlm_plugin.qgis_shell.extent import canvas_extent_in_layer_crs

    layer = raster_layer(rasters["scene"])
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    to_wgs84 = QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance())
    canvas.setDestinationCrs(wgs84)
    canvas.setExtent(to_wgs84.transformBoundingBox(QgsRectangle(500050.0, 4099850.0, 500150.0, 4099950.0)))
    extent = canvas_extent_in_layer_crs(canvas, layer)
    shown = canvas.extent()
    # the canvas widens the box to its own aspect ratio; the centre stays
    assert extent.center == pytest.approx((500100.0, 4099900.0), abs=0.5)
    assert extent.width >= 99.0 and extent.height >= 99.0
    back = QgsCoordinateTransform(wgs84, layer.crs(), QgsProject.instance()).transformBoundingBox(shown)
    assert extent.as_tuple() == pytest.approx((back.xMinimum(), back.yMinimum(), back.xMaximum(), back.yMaximum()))


def test_same_crs_and_no_crs_are_not_transformed(canvas, rasters):
    from qgis.core import QgsRectangle

    from rs_vlm_plugin.qgis_shell.extent import canvas_extent_in_layer_crs, to_extent

    layer = raster_layer(rasters["scene"])
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(QgsRectangle(500000.0, 4099800.0, 500200.0, 4099950.0))
    assert canvas_extent_in_layer_crs(canvas, layer) == to_extent(canvas.extent())
    plain = raster_layer(rasters["no_crs"])
    assert not plain.crs().isValid()
    assert canvas_extent_in_layer_crs(canvas, plain) == to_extent(canvas.extent())


def test_untransformable_extent_is_a_sentence(qgis_app):
    from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle

    from rs_vlm_plugin.qgis_shell.extent import to_extent, transform_rectangle

    with pytest.raises(RsVlmError, match="zoom to the raster"):
        transform_rectangle(QgsRectangle(500000.0, 4099800.0, 500200.0, 4099950.0),
                            QgsCoordinateReferenceSystem("EPSG:4326"), QgsCoordinateReferenceSystem("EPSG:26914"))
    with pytest.raises(RsVlmError, match="empty"):
        to_extent(QgsRectangle())


def test_canvas_gsd_in_metres(canvas):
    from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle

    from rs_vlm_plugin.qgis_shell.extent import canvas_gsd_m

    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:26914"))
    canvas.setExtent(QgsRectangle(500000.0, 4099700.0, 500400.0, 4100000.0))
    assert canvas_gsd_m(canvas) == pytest.approx(canvas.mapUnitsPerPixel())
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:4326"))
    canvas.setExtent(QgsRectangle(10.0, 59.99, 10.04, 60.02))
    assert canvas_gsd_m(canvas) == pytest.approx(canvas.mapUnitsPerPixel() * 111_320 * 0.5, rel=0.01)
