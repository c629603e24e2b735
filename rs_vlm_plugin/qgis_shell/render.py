"""Render layers to a PNG with QGIS's own map renderer (demo map, README pictures)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsMapLayer, QgsMapRendererParallelJob, QgsMapSettings, QgsRectangle
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def render_png(layers: list[QgsMapLayer], extent: QgsRectangle, path: Path, width: int = 1600) -> Path:
    """Draw ``layers`` (first on top) over ``extent`` into a PNG, labels included.

    Args:
        layers: Layers in drawing order, topmost first (as in the layer panel).
        extent: Map extent in the CRS of the last (bottom) layer.
        path: PNG to write (its folder is created).
        width: Image width in pixels; the height follows the extent's aspect.
    """
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setBackgroundColor(QColor(255, 255, 255))
    height = max(1, int(round(width * extent.height() / extent.width())))
    settings.setOutputSize(QSize(width, height))
    settings.setExtent(extent)
    settings.setFlag(QgsMapSettings.Flag.DrawLabeling, True)
    settings.setFlag(QgsMapSettings.Flag.Antialiasing, True)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not job.renderedImage().save(str(path), "PNG"):
        raise OSError(f"could not write {path}")
    return path
