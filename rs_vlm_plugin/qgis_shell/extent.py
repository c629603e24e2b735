"""Extents between QGIS (QgsRectangle, canvas CRS, selected polygons) and the core (Extent and WKB in the
raster's CRS)."""

from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsGeometry,
    QgsProject,
    QgsRectangle,
)

from ..core.errors import RsVlmError
from ..core.geometry import Extent


def to_extent(rect: QgsRectangle) -> Extent:
    """A QgsRectangle as a core :class:`Extent` (a sentence-error when it is empty)."""
    if rect is None or rect.isNull() or rect.isEmpty():
        raise RsVlmError("The extent is empty; zoom to the area to process or give a non-empty extent.")
    return Extent(rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())


def to_rectangle(extent: Extent) -> QgsRectangle:
    """A core :class:`Extent` as a QgsRectangle."""
    return QgsRectangle(extent.xmin, extent.ymin, extent.xmax, extent.ymax)


def transform_rectangle(rect: QgsRectangle, source_crs: QgsCoordinateReferenceSystem,
                        target_crs: QgsCoordinateReferenceSystem,
                        context: QgsCoordinateTransformContext | None = None) -> QgsRectangle:
    """The bounding box of ``rect`` once transformed from ``source_crs`` to ``target_crs``.

    Either CRS being invalid (a raster without CRS) means no transformation is possible; the
    rectangle is then returned as it is, in the units the user sees.

    Raises:
        RsVlmError: The rectangle cannot be expressed in the target CRS (for example an
            area outside the target projection's domain).
    """
    if not (source_crs.isValid() and target_crs.isValid()) or source_crs == target_crs:
        return QgsRectangle(rect)
    context = context or QgsProject.instance().transformContext()
    transform = QgsCoordinateTransform(source_crs, target_crs, context)
    try:
        out = transform.transformBoundingBox(rect)
    except QgsCsException as exc:
        raise RsVlmError(
            f"The extent cannot be transformed from {source_crs.authid() or 'the map CRS'} to "
            f"{target_crs.authid() or 'the raster CRS'} ({exc}); zoom to the raster and try again."
        ) from exc
    if out.isEmpty() or not out.isFinite():
        raise RsVlmError(
            f"The extent does not exist in {target_crs.authid() or 'the raster CRS'}; zoom to the raster and try again."
        )
    return out


def canvas_extent_in_layer_crs(canvas, layer) -> Extent:
    """The map canvas's visible extent in the layer's CRS.

    Args:
        canvas: The QgsMapCanvas.
        layer: The raster layer the extent is for.

    Returns:
        The bounding box of the visible area in the layer's CRS (not clipped to the raster).
    """
    canvas_crs = canvas.mapSettings().destinationCrs()
    rect = transform_rectangle(canvas.extent(), canvas_crs, layer.crs(), QgsProject.instance().transformContext())
    return to_extent(rect)


def canvas_gsd_m(canvas) -> float | None:
    """The canvas's ground size of one screen pixel in metres, or None when unknown.

    Used as the nominal pixel size of web layers (WMS, XYZ), which have no native one.
    """
    from qgis.core import QgsUnitTypes

    settings = canvas.mapSettings()
    units = settings.destinationCrs().mapUnits() if settings.destinationCrs().isValid() else None
    per_pixel = canvas.mapUnitsPerPixel()
    if not per_pixel or per_pixel <= 0 or units is None:
        return None
    if units == QgsUnitTypes.DistanceUnit.DistanceDegrees:
        from ..core.geometry import metres_per_degree

        return per_pixel * metres_per_degree(canvas.extent().center().y())
    if units == QgsUnitTypes.DistanceUnit.DistanceUnknownUnit:
        return None
    return per_pixel * QgsUnitTypes.fromUnitToUnitFactor(units, QgsUnitTypes.DistanceUnit.DistanceMeters)


def selection_mask(mask_layer, raster_layer) -> tuple[object, bytes]:
    """The selected polygons of ``mask_layer`` in the raster's CRS: (bounding Extent, WKB).

    Raises:
        RsVlmError: No polygon layer, nothing selected, or the polygons cannot be reprojected.
    """
    if mask_layer is None:
        raise RsVlmError("Choose the polygon layer whose selected features limit the area.")
    features = list(mask_layer.getSelectedFeatures())
    if not features:
        raise RsVlmError(f"Nothing is selected in {mask_layer.name()}; select one or more polygons first "
                         "(or choose another scope).")
    transform = None
    if mask_layer.crs().isValid() and raster_layer.crs().isValid() and mask_layer.crs() != raster_layer.crs():
        transform = QgsCoordinateTransform(mask_layer.crs(), raster_layer.crs(), QgsProject.instance().transformContext())
    parts = []
    for feature in features:
        geometry = QgsGeometry(feature.geometry())
        if geometry.isNull():
            continue
        if transform is not None:
            try:
                geometry.transform(transform)
            except QgsCsException as exc:
                raise RsVlmError(f"The selected polygons cannot be reprojected to the raster's CRS ({exc}).") from exc
        parts.append(geometry)
    if not parts:
        raise RsVlmError(f"The selected features of {mask_layer.name()} have no geometry; select polygons.")
    union = QgsGeometry.unaryUnion(parts)
    return to_extent(union.boundingBox()), bytes(union.asWkb())


def zoom_canvas_to(canvas, extent: Extent, crs_wkt: str | None = None) -> str | None:
    """Zoom ``canvas`` to ``extent`` (in the CRS of ``crs_wkt``) with a margin and flash it; the
    reason in one sentence when the extent cannot be shown in the canvas's CRS, else None."""
    crs = QgsCoordinateReferenceSystem.fromWkt(crs_wkt) if crs_wkt else QgsCoordinateReferenceSystem()
    target = canvas.mapSettings().destinationCrs()
    try:
        rect = transform_rectangle(to_rectangle(extent), crs, target)
    except RsVlmError as exc:
        return str(exc)
    flash = QgsGeometry.fromRect(rect)
    rect.scale(1.1)
    canvas.setExtent(rect)
    canvas.refresh()
    canvas.flashGeometries([flash], target)
    return None
