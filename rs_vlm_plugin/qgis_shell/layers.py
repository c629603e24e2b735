"""Result GeoPackages as styled, labelled layers in the project.

The styles ship as QML files in ``resources/styles/`` (built in code by ``scripts/make_styles.py``,
``python3 build.py styles``): caption layers get a transparent fill and an outline whose colour
and width say the level (global, region, object), labelled with the caption; search hits and
evidence are coloured by score and labelled with rank and score; outlines of what a search
found are drawn without fill, cyan to magenta by score, boxes solid and merged cells dashed;
classes get one colour per class; the DRIS plan is outlined by depth. Every style has a map tip and a display expression.
:func:`style_layer` loads the file and adds only what depends on the data: the class
categories and the score breaks.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsGraduatedSymbolRenderer,
    QgsMapLayer,
    QgsProject,
    QgsRendererCategory,
    QgsRuleBasedRenderer,
    QgsVectorLayer,
    NULL,
)

from ..core.distributed.outputs import BATCH_LAYER
from ..core.errors import RsVlmError
from ..core.jobs.results import (CAPTION_LAYERS, CLASS_LAYER, EVIDENCE_LAYER, EVIDENCE_OUTLINE_LAYER, SEARCH_LAYER,
                                 SEARCH_OUTLINE_LAYER)
from ..core.planning.plan_layer import PLAN_LAYER
from ..core.records import LEVELS

CAPTION_STYLES = {
    # level: (outline colour, outline width in mm, label size in points, display name)
    "global": ("#d62828", 0.9, 11.0, "Global caption"),
    "region": ("#f77f00", 0.6, 9.0, "Region captions"),
    "object": ("#1d9a8a", 0.3, 7.5, "Object captions"),
}
LEVEL_OF_LAYER = {layer: level for level, layer in CAPTION_LAYERS.items()}
HIT_COLOURS = ("#ffffb2", "#bd0026")  # low score pale yellow, high score deep red
HIT_CLASSES = 5
HIT_OPACITY = 0.35
OUTLINE_COLOURS = ("#00e5ff", "#ff00c8")  # outlines: cyan (lowest score) to magenta (best), no fill
OUTLINE_LAYERS = (SEARCH_OUTLINE_LAYER, EVIDENCE_OUTLINE_LAYER)
LABEL_WRAP_CHARACTERS = 32
PLAN_DEPTH_COLOURS = ("#313695", "#4575b4", "#74add1", "#abd9e9", "#fee090", "#fdae61", "#f46d43", "#d73027")
"""Outline colour of encoded plan tiles by depth, coarse (cool) to fine (warm); the last for deeper too."""
CLASS_PALETTE = (  # the class colours, in the order classes take them (saved in classes.qml)
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
    "#1f78b4", "#b2df8a", "#fb9a99", "#cab2d6")
STYLES_DIR = Path(__file__).resolve().parents[1] / "resources" / "styles"
"""The shipped QML styles (``python3 build.py styles`` writes them)."""
STYLE_FILES = {
    "captions": "captions.qml",
    "batch_captions": "batch_captions.qml",
    "search_hits": "search_hits.qml",
    "evidence": "evidence.qml",
    "classes": "classes.qml",
    "dris_plan": "dris_plan.qml",
    "outlines": "outlines.qml",
}
"""QML file of each style key."""
STYLE_CATEGORIES = (QgsMapLayer.StyleCategory.Symbology | QgsMapLayer.StyleCategory.Labeling | QgsMapLayer.StyleCategory.MapTips | QgsMapLayer.StyleCategory.Rendering
                    | QgsMapLayer.StyleCategory.LayerConfiguration)
"""What the QML files carry and set: renderer, labels, map tip, display expression (QGIS 3.22 saves it
with LayerConfiguration), rendering options."""


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
    if layer_name == PLAN_LAYER:
        return "DRIS plan (where compute went)"
    if layer_name in OUTLINE_LAYERS:
        return f'Outlines: "{query}"' if query else "Outlines"
    if layer_name == BATCH_LAYER:
        return "Captions"
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


def style_key(layer_name: str) -> str | None:
    """The style (a key of :data:`STYLE_FILES`) of a result layer, by its GeoPackage layer name."""
    if layer_name in LEVEL_OF_LAYER:
        return "captions"
    if layer_name == BATCH_LAYER:
        return "batch_captions"
    if layer_name in (SEARCH_LAYER, EVIDENCE_LAYER, CLASS_LAYER, PLAN_LAYER):
        return layer_name
    if layer_name in OUTLINE_LAYERS:
        return "outlines"
    return None


def style_path(key: str) -> Path:
    """The QML file of a style key."""
    return STYLES_DIR / STYLE_FILES[key]


def style_layer(layer: QgsVectorLayer, layer_name: str) -> None:
    """Apply the RS-VLM style of a result layer, chosen by its GeoPackage layer name.

    Loads the shipped QML (renderer, labels, map tip, display expression), then fits what
    depends on the data: one category per class present, score breaks over the layer's scores.
    Layers of other names are left as they are.

    Raises:
        RsVlmError: The style file is missing or unreadable (the plugin is incomplete).
    """
    key = style_key(layer_name)
    if key is None:
        return
    path = style_path(key)
    if not path.is_file():
        raise RsVlmError(f"The layer style {path} is missing; reinstall the RS-VLM plugin "
                         "(or run `python3 build.py styles` in a source checkout).")
    message, ok = layer.loadNamedStyle(str(path), STYLE_CATEGORIES)
    if not ok:
        raise RsVlmError(f"The layer style {path} could not be loaded ({message}); reinstall the RS-VLM plugin.")
    renderer = layer.renderer()
    if isinstance(renderer, QgsCategorizedSymbolRenderer):
        _class_categories(layer, renderer)
    elif isinstance(renderer, QgsGraduatedSymbolRenderer):
        _score_classes(layer, renderer)
    elif isinstance(renderer, QgsRuleBasedRenderer):
        _drop_absent_levels(layer, renderer)
    layer.triggerRepaint()


def _drop_absent_levels(layer: QgsVectorLayer, renderer: QgsRuleBasedRenderer) -> None:
    """Keep only the rules of the levels the layer holds, so each caption layer's legend shows its own."""
    index = layer.fields().indexOf("level")
    if index < 0 or layer.featureCount() == 0:
        return
    present = {str(v) for v in layer.uniqueValues(index)}
    root = renderer.rootRule()
    for rule in list(root.children()):
        level = next((name for name in LEVELS if f"'{name}'" in rule.filterExpression()), None)
        if level is not None and level not in present:
            root.removeChild(rule)


def _class_categories(layer: QgsVectorLayer, renderer: QgsCategorizedSymbolRenderer) -> None:
    """One category per class present (a legend entry each), sorted by name.

    The QML's categories are the palette (placeholders "class 1", "class 2"...); the classes take
    their symbols in order, cycling when there are more classes than colours.
    """
    palette = [c.symbol().clone() for c in renderer.categories() if c.value() not in ("", None, NULL)]
    if not palette:
        palette = [renderer.sourceSymbol().clone()]
    index = layer.fields().indexOf(renderer.classAttribute())
    values = sorted(str(v) for v in layer.uniqueValues(index) if v is not None and v != NULL) if index >= 0 else []
    renderer.deleteAllCategories()
    for k, value in enumerate(values):
        renderer.addCategory(QgsRendererCategory(value, palette[k % len(palette)].clone(), value))


def _score_classes(layer: QgsVectorLayer, renderer: QgsGraduatedSymbolRenderer) -> None:
    """Equal-interval score breaks (at most :data:`HIT_CLASSES`) over the layer's scores."""
    count = layer.featureCount()
    if count > 0:
        renderer.updateClasses(layer, min(HIT_CLASSES, count))


SCORE_FIELDS = ("score", "confidence")


def filter_by_score(layers: list, threshold: float | None, outline_threshold: float) -> None:
    """Show only the features of result layers that score at least ``threshold`` (None: all of them).

    Outline layers (their "shape" field) filter by ``outline_threshold``, the outlines' own score
    range. A layer the user removed is dropped from ``layers``.
    """
    for layer in list(layers):
        try:
            names = layer.fields().names()
        except RuntimeError:  # the user removed the layer
            layers.remove(layer)
            continue
        name = next((f for f in SCORE_FIELDS if f in names), None)
        if name is not None:
            value = outline_threshold if "shape" in names else threshold
            layer.setSubsetString("" if threshold is None else f'"{name}" >= {value - 1e-9!r}')  # as the list: no rounding up
            layer.triggerRepaint()
