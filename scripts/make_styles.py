#!/usr/bin/env python3
"""Build the RS-VLM layer styles in code and write them as QML files.

    .venv/bin/python scripts/make_styles.py [--out rs_vlm_plugin/resources/styles]

(``python3 build.py styles`` runs it headless.) Each style is built on an empty layer with the
result layer's real fields (written by ``core.gpkg``), then saved with ``saveNamedStyle``:
renderer, labels, map tip and display expression. The plugin loads these files
(``qgis_shell.layers.style_layer``) and adds only what depends on the data: the class
categories and the score breaks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qgis.core import (  # noqa: E402 - after the path set-up
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsClassificationEqualInterval,
    QgsFeatureRequest,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsPalLayerSettings,
    QgsProperty,
    QgsRendererCategory,
    QgsRuleBasedLabeling,
    QgsRuleBasedRenderer,
    QgsSymbolLayer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor, QFont  # noqa: E402

from rs_vlm_plugin.core.gpkg import write_geopackage  # noqa: E402
from rs_vlm_plugin.core.records import (  # noqa: E402
    CaptionRecord,
    ClassRecord,
    EvidenceRecord,
    OutlineRecord,
    PlanTileRecord,
    SearchHit,
)
from rs_vlm_plugin.qgis_shell.layers import (  # noqa: E402
    CAPTION_STYLES,
    CLASS_PALETTE,
    HIT_COLOURS,
    HIT_OPACITY,
    LABEL_WRAP_CHARACTERS,
    OUTLINE_COLOURS,
    PLAN_DEPTH_COLOURS,
    STYLE_CATEGORIES,
    STYLE_FILES,
    STYLES_DIR,
)

# Map tips are HTML with QGIS expressions in [% %].
CAPTION_TIP = ('<b>[% "caption" %]</b><br>'
               '<i>[% "concepts" %]</i><br>'
               'score [% format_number("score", 2) %], [% "level" %], '
               '[% format_number("gsd_m", 2) %] m/pixel')
BATCH_TIP = CAPTION_TIP + '<br>from [% "source" %]'
HIT_TIP = ('<b>#[% "rank" %]</b> score [% format_number("score", 3) %]<br>'
           '[% "caption" %]')
SEARCH_TIP = HIT_TIP + '<br><i>"[% "query" %]"</i>'
EVIDENCE_TIP = ('<b>[% "answer" %]</b><br>' + HIT_TIP + '<br><i>[% "question" %]</i>')
CLASS_TIP = ('<b>[% "class" %]</b> ([% format_number("confidence", 2) %])<br>'
             'runner-up: [% "runner_up" %]<br>[% "level" %], [% format_number("gsd_m", 2) %] m/pixel')
PLAN_TIP = ('<b>tile [% "key" %]</b>, depth [% "depth" %][% if("is_leaf", \' (encoded)\', \' (split)\') %]<br>'
            'refined for: [% "reason" %][% if("score" IS NULL, \'\', concat(\', query score \', '
            'format_number("score", 3))) %]<br>'
            'complexity [% format_number("complexity", 2) %]<br>'
            'gsd [% format_number("gsd_m", 2) %] m/pixel')
OUTLINE_TIP = ('<b>#[% "rank" %]</b> [% "shape" %], relevance [% format_number("score", 3) %]<br>'
               '[% "cells" %] cells, [% format_number("area_m2", 0) %] m²<br>'
               '<i>"[% "query" %]"</i>, seen at [% format_number("gsd_m", 2) %] m/pixel')
HIT_LABEL = "concat('#', \"rank\", '  ', format_number(\"score\", 3))"


def label_settings(size: float, colour: QColor, text: str, is_expression: bool) -> QgsPalLayerSettings:
    """Labels with a white halo, wrapped to a few words a line, centred over the polygon."""
    text_format = QgsTextFormat()
    font = QFont()
    font.setPointSizeF(size)
    text_format.setFont(font)
    text_format.setSize(size)
    text_format.setColor(colour)
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    buffer.setColor(QColor(255, 255, 255, 220))
    text_format.setBuffer(buffer)
    settings = QgsPalLayerSettings()
    settings.setFormat(text_format)
    settings.placement = QgsPalLayerSettings.OverPoint
    settings.autoWrapLength = LABEL_WRAP_CHARACTERS
    settings.multilineAlign = QgsPalLayerSettings.MultiCenter
    settings.fieldName = text
    settings.isExpression = is_expression
    return settings


def outline_symbol(colour: str, width: float, style: str = "solid") -> QgsFillSymbol:
    """A transparent fill with a coloured outline (mm)."""
    return QgsFillSymbol.createSimple({"style": "no", "outline_color": colour, "outline_width": str(width),
                                       "outline_width_unit": "MM", "outline_style": style, "joinstyle": "miter"})


def level_rules(layer: QgsVectorLayer) -> None:
    """One renderer rule and one label rule per caption level, in the level's colour and size."""
    root = QgsRuleBasedRenderer.Rule(None)
    labels = QgsRuleBasedLabeling.Rule(None)
    for level, (colour, width, size, name) in CAPTION_STYLES.items():
        condition = f"\"level\" = '{level}'"
        root.appendChild(QgsRuleBasedRenderer.Rule(outline_symbol(colour, width), 0, 0, condition, name))
        rule = QgsRuleBasedLabeling.Rule(label_settings(size, QColor(colour).darker(160), "caption", False),
                                         0, 0, condition, name)
        labels.appendChild(rule)
    layer.setRenderer(QgsRuleBasedRenderer(root))
    layer.setLabeling(QgsRuleBasedLabeling(labels))
    layer.setLabelsEnabled(True)


def style_captions(layer: QgsVectorLayer) -> None:
    """Caption layers (one level each, or all levels for a batch): outline and labels by level."""
    level_rules(layer)
    layer.setMapTipTemplate(CAPTION_TIP)
    layer.setDisplayExpression('"caption"')


def style_batch(layer: QgsVectorLayer) -> None:
    """The merged batch layer: as the caption layers, with the source raster in the map tip."""
    level_rules(layer)
    layer.setMapTipTemplate(BATCH_TIP)
    layer.setDisplayExpression("concat(\"source\", ': ', \"caption\")")


def scored_tiles(layer: QgsVectorLayer, tip: str) -> None:
    """Graduated by score (pale yellow to deep red, equal intervals), best drawn on top, "#rank score"."""
    symbol = QgsFillSymbol.createSimple({"outline_color": "#3d0a12", "outline_width": "0.4",
                                         "outline_width_unit": "MM"})
    symbol.setOpacity(HIT_OPACITY)  # the ramp sets opaque colours; the image must show through
    renderer = QgsGraduatedSymbolRenderer("score")
    renderer.setSourceSymbol(symbol)
    renderer.setSourceColorRamp(QgsGradientColorRamp(QColor(HIT_COLOURS[0]), QColor(HIT_COLOURS[1])))
    renderer.setClassificationMethod(QgsClassificationEqualInterval())
    # best hits drawn last, on top of the weaker (often larger) tiles they overlap
    renderer.setOrderBy(QgsFeatureRequest.OrderBy([QgsFeatureRequest.OrderByClause("score", True)]))
    renderer.setOrderByEnabled(True)
    layer.setRenderer(renderer)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(label_settings(9.0, QColor("#3d0a12"), HIT_LABEL, True)))
    layer.setLabelsEnabled(True)
    layer.setMapTipTemplate(tip)
    layer.setDisplayExpression("concat('#', \"rank\", ' ', \"caption\")")


def class_symbol(colour: str) -> QgsFillSymbol:
    """A half-transparent fill in ``colour`` with a thin white outline."""
    symbol = QgsFillSymbol.createSimple({"color": colour, "outline_color": "#ffffff", "outline_width": "0.2",
                                         "outline_width_unit": "MM"})
    symbol.setOpacity(0.45)
    return symbol


def style_classes(layer: QgsVectorLayer) -> None:
    """Categorised on "class", class labels.

    The categories saved are the palette (placeholders "class 1", "class 2"...) and a grey one for
    other values; at load time :func:`layers.style_layer` replaces them with one category per
    class in the data, coloured by the placeholders' symbols in order.
    """
    categories = [QgsRendererCategory(f"class {k + 1}", class_symbol(colour), f"class {k + 1}")
                  for k, colour in enumerate(CLASS_PALETTE)]
    categories.append(QgsRendererCategory("", class_symbol("#888888"), "other"))
    renderer = QgsCategorizedSymbolRenderer("class", categories)
    renderer.setSourceSymbol(class_symbol("#888888"))
    layer.setRenderer(renderer)
    text = "concat(\"class\", ' ', format_number(\"confidence\", 2))"
    layer.setLabeling(QgsVectorLayerSimpleLabeling(label_settings(8.0, QColor("#222222"), text, True)))
    layer.setLabelsEnabled(True)
    layer.setMapTipTemplate(CLASS_TIP)
    layer.setDisplayExpression('"class"')


def style_plan(layer: QgsVectorLayer) -> None:
    """Encoded tiles outlined in a colour per depth (coarse cool, fine warm), split nodes faint dashes."""
    root = QgsRuleBasedRenderer.Rule(None)
    deepest = len(PLAN_DEPTH_COLOURS) - 1
    for depth, colour in enumerate(PLAN_DEPTH_COLOURS):
        compare = ">=" if depth == deepest else "="
        condition = f"\"is_leaf\" = 1 AND \"depth\" {compare} {depth}"
        name = f"Encoded, depth {depth}{' or deeper' if depth == deepest else ''}"
        root.appendChild(QgsRuleBasedRenderer.Rule(outline_symbol(colour, 0.5), 0, 0, condition, name))
    root.appendChild(QgsRuleBasedRenderer.Rule(outline_symbol("#7f7f7f", 0.2, "dash"), 0, 0,
                                               "\"is_leaf\" = 0", "Split further"))
    layer.setRenderer(QgsRuleBasedRenderer(root))
    labels = QgsRuleBasedLabeling.Rule(None)
    labels.appendChild(QgsRuleBasedLabeling.Rule(
        label_settings(7.0, QColor("#202020"), "\"depth\"", True), 0, 0, "\"is_leaf\" = 1", "Depth"))
    layer.setLabeling(QgsRuleBasedLabeling(labels))
    layer.setLabelsEnabled(True)
    layer.setMapTipTemplate(PLAN_TIP)
    layer.setDisplayExpression("concat('tile ', \"key\", ', depth ', \"depth\")")


def style_outlines(layer: QgsVectorLayer) -> None:
    """Outlines of what a query found: no fill, colour by score (cyan to magenta), boxes solid, polygons dashed."""
    symbol = QgsFillSymbol.createSimple({"style": "no", "outline_color": OUTLINE_COLOURS[1], "outline_width": "0.6",
                                         "outline_width_unit": "MM", "joinstyle": "miter"})
    symbol.symbolLayer(0).setDataDefinedProperty(
        QgsSymbolLayer.PropertyStrokeStyle, QgsProperty.fromExpression("if(\"shape\" = 'box', 'solid', 'dash')"))
    renderer = QgsGraduatedSymbolRenderer("score")
    renderer.setSourceSymbol(symbol)
    renderer.setSourceColorRamp(QgsGradientColorRamp(QColor(OUTLINE_COLOURS[0]), QColor(OUTLINE_COLOURS[1])))
    renderer.setClassificationMethod(QgsClassificationEqualInterval())
    renderer.setOrderBy(QgsFeatureRequest.OrderBy([QgsFeatureRequest.OrderByClause("score", True)]))
    renderer.setOrderByEnabled(True)
    layer.setRenderer(renderer)
    text = "concat('#', \"rank\", ' ', format_number(\"score\", 2))"
    layer.setLabeling(QgsVectorLayerSimpleLabeling(label_settings(8.0, QColor("#6a0057"), text, True)))
    layer.setLabelsEnabled(True)
    layer.setMapTipTemplate(OUTLINE_TIP)
    layer.setDisplayExpression("concat('#', \"rank\", ' ', \"shape\", ' ', format_number(\"score\", 3))")


BUILDERS = {
    # style file key: (record type whose fields the layer has, builder)
    "captions": (CaptionRecord, style_captions),
    "batch_captions": (CaptionRecord, style_batch),
    "search_hits": (SearchHit, lambda layer: scored_tiles(layer, SEARCH_TIP)),
    "evidence": (EvidenceRecord, lambda layer: scored_tiles(layer, EVIDENCE_TIP)),
    "classes": (ClassRecord, style_classes),
    "dris_plan": (PlanTileRecord, style_plan),
    "outlines": (OutlineRecord, style_outlines),
}


def write_styles(out: Path) -> list[Path]:
    """Build every style and save it as ``out/<key>.qml``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for key, (kind, build) in BUILDERS.items():
            gpkg = write_geopackage(Path(tmp) / f"{key}.gpkg", {key: []}, None, kinds={key: kind})
            layer = QgsVectorLayer(f"{gpkg}|layername={key}", key, "ogr")
            if not layer.isValid():
                raise RuntimeError(f"could not open the empty {key} layer written to {gpkg}")
            build(layer)
            target = out / STYLE_FILES[key]
            message, ok = layer.saveNamedStyle(str(target), STYLE_CATEGORIES)
            if not ok:
                raise RuntimeError(f"could not save {target}: {message}")
            written.append(target)
            del layer
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=STYLES_DIR, help="folder of the .qml files")
    args = parser.parse_args(argv)
    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    try:
        for path in write_styles(args.out):
            print(f"wrote {path}")
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
