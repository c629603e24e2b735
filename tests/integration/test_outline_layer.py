"""The outline layer in a real headless QGIS: loaded from a result GeoPackage, styled from outlines.qml
(graduated cyan to magenta by score, no fill, boxes solid and merged cells dashed), map tips and labels,
drawn on a map; the DRIS plan's tip says why each tile was refined."""

from __future__ import annotations

import pytest
from shapely.geometry import Polygon, box

from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.gpkg import write_geopackage
from rs_vlm_plugin.core.records import OutlineRecord, PlanTileRecord

UTM = "EPSG:32612"


def _outline(rank: int, score: float, shape: str, geometry) -> OutlineRecord:
    return OutlineRecord(query="storage tanks", rank=rank, score=score, shape=shape, cells=len(geometry.exterior.coords),
                         area_m2=geometry.area, depth=3, gsd_m=0.5, extent=Extent(*geometry.bounds),
                         geometry_wkb=geometry.wkb, source="scene")


def _records() -> list[OutlineRecord]:
    x, y = 500_000.0, 4_000_000.0
    l_shape = Polygon([(x, y), (x + 40, y), (x + 40, y + 10), (x + 10, y + 10), (x + 10, y + 40), (x, y + 40)])
    return [_outline(1, 0.998, "box", box(x + 60, y + 60, x + 80, y + 80)),
            _outline(2, 0.995, "polygon", l_shape),
            _outline(3, 0.991, "box", box(x + 100, y, x + 110, y + 10))]


def _crs_wkt() -> str:
    from qgis.core import QgsCoordinateReferenceSystem

    return QgsCoordinateReferenceSystem(UTM).toWkt()


def _context(layer, feature):
    from qgis.core import QgsExpressionContext, QgsExpressionContextUtils

    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
    context.setFeature(feature)
    return context


def test_outline_layer_loads_styled_and_draws(project, tmp_path):
    from qgis.core import (QgsExpression, QgsGraduatedSymbolRenderer, QgsMapRendererSequentialJob, QgsMapSettings,
                           QgsSymbolLayer, QgsWkbTypes)
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    from rs_vlm_plugin.core.jobs.results import SEARCH_LAYER, SEARCH_OUTLINE_LAYER
    from rs_vlm_plugin.qgis_shell.layers import OUTLINE_COLOURS, add_result_layers, display_name

    gpkg = write_geopackage(tmp_path / "run.gpkg", {SEARCH_LAYER: [], SEARCH_OUTLINE_LAYER: _records()}, _crs_wkt())
    added = add_result_layers(gpkg, [SEARCH_LAYER, SEARCH_OUTLINE_LAYER], "run", query="storage tanks",
                              project=project)
    assert [layer.name() for layer in added] == [display_name(SEARCH_OUTLINE_LAYER, "storage tanks")]
    layer = added[0]
    assert layer.geometryType() == QgsWkbTypes.PolygonGeometry and layer.featureCount() == 3
    renderer = layer.renderer()
    assert isinstance(renderer, QgsGraduatedSymbolRenderer) and renderer.classAttribute() == "score"
    ranges = renderer.ranges()
    assert len(ranges) >= 2
    assert ranges[0].lowerValue() == pytest.approx(0.991) and ranges[-1].upperValue() == pytest.approx(0.998)
    assert ranges[0].symbol().color().name() == OUTLINE_COLOURS[0]
    assert ranges[-1].symbol().color().name() == OUTLINE_COLOURS[1]
    fill = ranges[0].symbol().symbolLayer(0)
    assert fill.brushStyle() == 0  # no fill: the image shows through
    dash = fill.dataDefinedProperties().property(QgsSymbolLayer.PropertyStrokeStyle)
    assert dash.isActive() and "box" in dash.expressionString()
    features = {f["rank"]: f for f in layer.getFeatures()}
    assert QgsExpression(dash.expressionString()).evaluate(_context(layer, features[1])) == "solid"
    assert QgsExpression(dash.expressionString()).evaluate(_context(layer, features[2])) == "dash"
    assert features[2].geometry().area() == pytest.approx(700.0)  # the merged cells, not their box
    tip = QgsExpression.replaceExpressionText(layer.mapTipTemplate(), _context(layer, features[1]))
    assert "#1" in tip and "0.998" in tip and "box" in tip and "storage tanks" in tip and "[%" not in tip
    assert layer.labelsEnabled()
    # drawn: outline pixels in the ramp's colours over a white map
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent().buffered(10))
    settings.setOutputSize(QSize(200, 100))
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    coloured = sum(1 for px in range(0, 200, 2) for py in range(0, 100, 2)
                   if QColor(image.pixel(px, py)).saturation() > 100)
    assert coloured > 10


def test_plan_layer_tip_says_why_a_tile_was_refined(project, tmp_path):
    from qgis.core import QgsExpression

    from rs_vlm_plugin.core.planning.plan_layer import PLAN_LAYER
    from rs_vlm_plugin.qgis_shell.layers import add_result_layers

    records = [PlanTileRecord("0", 0, 0.4, False, 2.0, Extent(0, 0, 100, 100), "scene", "query", 0.41),
               PlanTileRecord("0.1", 1, 0.3, True, 1.0, Extent(50, 50, 100, 100), "scene", "complexity", None)]
    gpkg = write_geopackage(tmp_path / "plan.gpkg", {PLAN_LAYER: records}, _crs_wkt())
    (layer,) = add_result_layers(gpkg, [PLAN_LAYER], "plan", project=project)
    tips = {f["key"]: QgsExpression.replaceExpressionText(layer.mapTipTemplate(), _context(layer, f))
            for f in layer.getFeatures()}
    assert "refined for: query, query score 0.410" in tips["0"]
    assert "refined for: complexity" in tips["0.1"] and "query score" not in tips["0.1"]


def test_the_score_slider_moves_hits_and_outlines_each_over_their_own_range(qgis_app):
    """Hits score about 0.1-0.4 (cosine), outlines about 0.99-1 (calibrated relevance): one slider
    position keeps the same share of each, instead of hiding every hit before the first outline."""
    from rs_vlm_plugin.core.jobs.results import SearchResult
    from rs_vlm_plugin.core.records import SearchHit
    from rs_vlm_plugin.qgis_shell.dock import KIND_ROLE, OUTLINE_KIND, RsVlmDock

    outlines = _records()  # 0.998, 0.995, 0.991
    whole = Extent(500_000, 4_000_000, 500_200, 4_000_200)
    hits = [SearchHit("storage tanks", k, score, "object", 2, q, 0.5, f"Tile {k}.")
            for k, (score, q) in enumerate(zip((0.40, 0.30, 0.20, 0.10), whole.quadrants()), start=1)]
    dock = RsVlmDock()
    dock.show_result(SearchResult("storage tanks", hits, [], None, _crs_wkt(), [], {}, outlines))
    items = [dock.results_list.item(i) for i in range(dock.results_list.count())]
    assert [i.data(KIND_ROLE) for i in items].count(OUTLINE_KIND) == 3
    assert dock.visible_results() == 7  # the slider starts at the bottom: everything shows
    dock.threshold_slider.setValue(50)  # half way up each range
    assert dock.threshold() == pytest.approx(0.25) and dock.outline_threshold() == pytest.approx(0.9945)
    shown = [i.text() for i in items if not i.isHidden()]
    assert sum(t.startswith("Outline") for t in shown) == 2 and len(shown) == 4  # 0.40, 0.30 and 0.998, 0.995
    assert "outlines 0.9945" in dock.threshold_label.text()
    dock.threshold_slider.setValue(100)
    assert dock.visible_results() == 2  # the best hit and the best outline
    dock.deleteLater()
