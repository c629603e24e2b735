"""Result GeoPackages as styled, labelled layers in the project.

Caption layers get a transparent fill and an outline whose colour and width say the level
(global, region, object), labelled with the caption; search hits are coloured by score with
a graduated renderer and labelled with rank and score. Styles are built in code.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsClassificationEqualInterval,
    QgsFeatureRequest,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsPalLayerSettings,
    QgsProject,
    QgsRendererCategory,
    QgsSingleSymbolRenderer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor, QFont

from ..core.pipeline import CAPTION_LAYERS, CLASS_LAYER, EVIDENCE_LAYER, SEARCH_LAYER

CAPTION_STYLES = {
    # level: (outline colour, outline width in mm, label size in points, display name)
    "global": ("#d62828", 0.9, 11.0, "Global caption"),
    "region": ("#f77f00", 0.6, 9.0, "Region captions"),
    "object": ("#1d9a8a", 0.3, 7.5, "Object captions"),
}
LEVEL_OF_LAYER = {layer: level for level, layer in CAPTION_LAYERS.items()}
BATCH_LAYER = "captions"
HIT_COLOURS = ("#ffffb2", "#bd0026")  # low score pale yellow, high score deep red
HIT_CLASSES = 5
HIT_OPACITY = 0.35
LABEL_WRAP_CHARACTERS = 32


def run_group_name(kind: str, query: str = "", when: datetime | None = None) -> str:
    """The layer-tree group of one run, for example "RS-VLM describe 2026-11-23 14:03"."""
    stamp = (when or datetime.now()).strftime("%Y-%m-%d %H:%M")
    about = f' "{query}"' if query else ""
    return f"RS-VLM {kind}{about} {stamp}"


def display_name(layer_name: str, query: str = "") -> str:
    """The name shown in the layers panel for a GeoPackage layer."""
    if layer_name in LEVEL_OF_LAYER:
        return CAPTION_STYLES[LEVEL_OF_LAYER[layer_name]][3]
    if layer_name == SEARCH_LAYER:
        return f'Search hits: "{query}"' if query else "Search hits"
    if layer_name == CLASS_LAYER:
        return "Classes"
    if layer_name == EVIDENCE_LAYER:
        return f'Evidence: "{query}"' if query else "Evidence"
    return layer_name


def open_layer(gpkg: str | Path, layer_name: str, display: str | None = None) -> QgsVectorLayer:
    """One layer of a GeoPackage as a QgsVectorLayer (ogr provider)."""
    return QgsVectorLayer(f"{gpkg}|layername={layer_name}", display or layer_name, "ogr")


def add_result_layers(gpkg: str | Path, layer_names: list[str], group_name: str, query: str = "",
                      project: QgsProject | None = None, skip_empty: bool = True) -> list[QgsVectorLayer]:
    """Load layers of a result GeoPackage into a new group at the top of the layer tree.

    Args:
        gpkg: The GeoPackage written by the job.
        layer_names: Its layers to load, drawn bottom first (global, region, object).
        group_name: Name of the new group (see :func:`run_group_name`).
        query: The search text, for the hits layer's name.
        project: Where to add them (default: the current project).
        skip_empty: Leave out layers without features.

    Returns:
        The layers added, top of the group first.
    """
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    group = root.insertGroup(0, group_name)
    added = []
    for name in layer_names:
        layer = open_layer(gpkg, name, display_name(name, query))
        if not layer.isValid() or (skip_empty and layer.featureCount() == 0):
            continue
        style_layer(layer, name)
        project.addMapLayer(layer, False)
        group.insertLayer(0, layer)  # later names (finer levels) on top
        added.append(layer)
    if not added:
        root.removeChildNode(group)
    return list(reversed(added))


def style_layer(layer: QgsVectorLayer, layer_name: str) -> None:
    """Apply the RS-VLM style for a result layer, chosen by its GeoPackage layer name."""
    if layer_name == SEARCH_LAYER:
        style_search_hits(layer)
    elif layer_name in LEVEL_OF_LAYER:
        style_captions(layer, LEVEL_OF_LAYER[layer_name])
    elif layer_name == BATCH_LAYER:
        style_merged_captions(layer)
    elif layer_name == CLASS_LAYER:
        style_classes(layer)
    elif layer_name == EVIDENCE_LAYER:
        style_search_hits(layer)
    layer.triggerRepaint()


CLASS_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
                 "#1f78b4", "#b2df8a", "#fb9a99", "#cab2d6")


def style_classes(layer: QgsVectorLayer) -> None:
    """One colour per class present (categorised on "class", a legend entry each), class labels."""
    index = layer.fields().indexOf("class")
    values = sorted(str(v) for v in layer.uniqueValues(index)) if index >= 0 else []
    categories = []
    for k, value in enumerate(values):
        symbol = QgsFillSymbol.createSimple({"color": CLASS_PALETTE[k % len(CLASS_PALETTE)],
                                             "outline_color": "#ffffff", "outline_width": "0.2",
                                             "outline_width_unit": "MM"})
        symbol.setOpacity(0.45)
        categories.append(QgsRendererCategory(value, symbol, value))
    layer.setRenderer(QgsCategorizedSymbolRenderer("class", categories))
    settings = _label_settings(8.0, QColor("#222222"))
    settings.fieldName = "concat(\"class\", ' ', format_number(\"confidence\", 2))"
    settings.isExpression = True
    _enable_labels(layer, settings)


def _outline_symbol(level: str) -> QgsFillSymbol:
    colour, width, _, _ = CAPTION_STYLES[level]
    return QgsFillSymbol.createSimple({
        "style": "no",
        "outline_color": colour,
        "outline_width": str(width),
        "outline_width_unit": "MM",
        "joinstyle": "miter",
    })


def style_captions(layer: QgsVectorLayer, level: str) -> None:
    """Transparent fill, outline by level, caption labels wrapped to a few words a line."""
    colour, _, size, _ = CAPTION_STYLES[level]
    layer.setRenderer(QgsSingleSymbolRenderer(_outline_symbol(level)))
    settings = _label_settings(size, QColor(colour).darker(160))
    settings.fieldName = "caption"
    settings.isExpression = False
    _enable_labels(layer, settings)


def style_merged_captions(layer: QgsVectorLayer) -> None:
    """All levels in one layer (batch captioning): outline by the "level" field, caption labels."""
    categories = [QgsRendererCategory(level, _outline_symbol(level), CAPTION_STYLES[level][3])
                  for level in CAPTION_STYLES]
    layer.setRenderer(QgsCategorizedSymbolRenderer("level", categories))
    settings = _label_settings(8.0, QColor("#333333"))
    settings.fieldName = "caption"
    settings.isExpression = False
    _enable_labels(layer, settings)


def style_search_hits(layer: QgsVectorLayer) -> None:
    """Hits coloured by score (graduated, pale to deep red), labelled "#rank score"."""
    symbol = QgsFillSymbol.createSimple({
        "outline_color": "#3d0a12",
        "outline_width": "0.4",
        "outline_width_unit": "MM",
    })
    symbol.setOpacity(HIT_OPACITY)  # the ramp sets opaque colours; the image must show through
    renderer = QgsGraduatedSymbolRenderer("score")
    renderer.setSourceSymbol(symbol)
    renderer.setSourceColorRamp(QgsGradientColorRamp(QColor(HIT_COLOURS[0]), QColor(HIT_COLOURS[1])))
    renderer.setClassificationMethod(QgsClassificationEqualInterval())
    if layer.featureCount() > 0:
        renderer.updateClasses(layer, min(HIT_CLASSES, max(1, layer.featureCount())))
    # best hits drawn last, on top of the weaker (often larger) tiles they overlap
    renderer.setOrderBy(QgsFeatureRequest.OrderBy([QgsFeatureRequest.OrderByClause("score", True)]))
    renderer.setOrderByEnabled(True)
    layer.setRenderer(renderer)
    settings = _label_settings(9.0, QColor("#3d0a12"))
    settings.fieldName = "concat('#', \"rank\", '  ', format_number(\"score\", 3))"
    settings.isExpression = True
    _enable_labels(layer, settings)


def _label_settings(size: float, colour: QColor) -> QgsPalLayerSettings:
    text = QgsTextFormat()
    font = QFont()
    font.setPointSizeF(size)
    text.setFont(font)
    text.setSize(size)
    text.setColor(colour)
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    buffer.setColor(QColor(255, 255, 255, 220))
    text.setBuffer(buffer)
    settings = QgsPalLayerSettings()
    settings.setFormat(text)
    settings.placement = QgsPalLayerSettings.OverPoint
    settings.autoWrapLength = LABEL_WRAP_CHARACTERS
    settings.multilineAlign = QgsPalLayerSettings.MultiCenter
    return settings


def _enable_labels(layer: QgsVectorLayer, settings: QgsPalLayerSettings) -> None:
    layer.setLabeling(QgsVectorLayerSimpleLabeling(settings))
    layer.setLabelsEnabled(True)
