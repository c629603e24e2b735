"""Plugin settings through real QgsSettings, run output paths, the shipped QML styles on real
result layers, and the DRIS plan layer (written from a real plan and styled)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from conftest import caption_records

from rs_vlm_plugin.core.gpkg import write_geopackage
from rs_vlm_plugin.core.jobs.results import CAPTION_LAYERS, CLASS_LAYER, EVIDENCE_LAYER, SEARCH_LAYER
from rs_vlm_plugin.core.planning.plan_layer import PLAN_LAYER, plan_records
from rs_vlm_plugin.core.records import ClassRecord, EvidenceRecord, SearchHit

UTM = "EPSG:26914"
WHEN = datetime(2026, 11, 23, 14, 3, 9)


# Settings ------------------------------------------------------------------------------------


@pytest.fixture()
def ini(qgis_app, tmp_path):
    """A real QgsSettings backed by a fresh .ini file."""
    from qgis.core import QgsSettings
    from qgis.PyQt.QtCore import QSettings

    return QgsSettings(str(tmp_path / "QGIS3.ini"), QSettings.IniFormat)


def test_settings_round_trip_through_qgssettings(ini):
    from qgis.core import QgsSettings
    from qgis.PyQt.QtCore import QSettings

    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    assert PluginSettings.load(ini) == PluginSettings()  # nothing stored: the defaults
    chosen = PluginSettings(models_folder="/data/models", model="my-model", device="cpu", threads=3,
                            output_folder="/data/runs", mode="classify", max_tiles=96, scope="selection",
                            show_plan=True, max_hits=25, classes="forest, water",
                            query_history=["storage tanks", "a river"])
    chosen.save(ini)
    assert ini.value("rs_vlm/device") == "cpu" and ini.contains("rs_vlm/query_history")
    # a new QgsSettings on the same file: what a later QGIS session reads (strings from the .ini)
    reread = PluginSettings.load(QgsSettings(ini.fileName(), QSettings.IniFormat))
    assert reread == chosen
    assert isinstance(reread.threads, int) and reread.show_plan is True
    assert reread.model_name == "my-model" and PluginSettings().model_name == "rs-vlm-lite0"


def test_settings_with_one_query_and_bad_values(ini):
    from qgis.core import QgsSettings
    from qgis.PyQt.QtCore import QSettings

    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    PluginSettings(query_history=["only one"], show_plan=False).save(ini)
    ini.setValue("rs_vlm/device", "tpu")  # not a device: back to "auto"
    ini.setValue("rs_vlm/max_tiles", 0)  # not a budget: back to the default
    ini.setValue("rs_vlm/threads", "many")  # not a number: back to the default
    ini.setValue("rs_vlm/max_hits", 12)  # fine: kept
    ini.sync()
    reread = PluginSettings.load(QgsSettings(ini.fileName(), QSettings.IniFormat))
    assert reread.query_history == ["only one"] and reread.show_plan is False
    assert reread.device == "auto" and reread.max_tiles == PluginSettings().max_tiles
    assert reread.threads == 0 and reread.max_hits == 12


def test_settings_default_store_is_the_profile_and_is_restored(qgis_app):
    """load()/save() without arguments use QgsSettings() (the active profile), under rs_vlm/."""
    from qgis.core import QgsSettings

    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    store = QgsSettings()
    before = {key: store.value(key) for key in store.allKeys() if key.startswith("rs_vlm/")}
    try:
        PluginSettings(mode="ask", max_hits=7).save()
        assert QgsSettings().value("rs_vlm/mode") == "ask"
        assert PluginSettings.load().max_hits == 7
    finally:
        store.remove("rs_vlm")
        for key, value in before.items():
            store.setValue(key, value)
        store.sync()


def test_query_history_keeps_twenty_distinct_newest_first():
    from rs_vlm_plugin.qgis_shell.settings import QUERY_HISTORY_SIZE, PluginSettings

    settings = PluginSettings()
    for k in range(25):
        settings.add_query(f"query {k}")
    settings.add_query("  query 10 ")  # again: moves to the front, not repeated
    settings.add_query("   ")  # blank: ignored
    assert len(settings.query_history) == QUERY_HISTORY_SIZE == 20
    assert settings.query_history[:3] == ["query 10", "query 24", "query 23"]
    assert settings.query_history.count("query 10") == 1
    assert "query 4" not in settings.query_history  # the oldest dropped out


def test_available_models_lists_valid_bundles_only(tmp_path, bundle_dir):
    from rs_vlm_plugin.qgis_shell.settings import PluginSettings, available_models, chosen_model_dir

    (tmp_path / "imported").mkdir()
    (tmp_path / "imported" / "manifest.json").write_text("{}")
    (tmp_path / "not_a_bundle").mkdir()  # no manifest.json
    (tmp_path / "stray.txt").write_text("x")
    models = available_models(PluginSettings(models_folder=str(tmp_path)))
    names = [name for name, _ in models]
    assert names[0] == "rs-vlm-lite0" and Path(models[0][1]) == bundle_dir
    assert ("imported", tmp_path / "imported") in models
    assert "not_a_bundle" not in names and "stray.txt" not in names
    assert [n for n, _ in available_models(PluginSettings())] == ["rs-vlm-lite0"]
    assert chosen_model_dir(PluginSettings(models_folder=str(tmp_path), model="imported")) == tmp_path / "imported"
    assert chosen_model_dir(PluginSettings(model="gone")) is None


# Output paths -------------------------------------------------------------------------------


def test_run_output_path_unsaved_project(project, tmp_path):
    from rs_vlm_plugin.qgis_shell.outputs import run_output_path
    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    assert not project.fileName()
    assert run_output_path("describe", project, PluginSettings(), WHEN) is None  # the dock asks for a folder
    folder = tmp_path / "chosen" / "runs"  # not there yet: created
    settings = PluginSettings(output_folder=str(folder))
    first = run_output_path("describe", project, settings, WHEN)
    assert first == folder / "rs_vlm_describe_20261123_140309.gpkg" and folder.is_dir()
    first.write_bytes(b"taken")
    second = run_output_path("describe", project, settings, WHEN)
    assert second == folder / "rs_vlm_describe_20261123_140309_2.gpkg"
    second.write_bytes(b"taken")
    assert run_output_path("describe", project, settings, WHEN).name == "rs_vlm_describe_20261123_140309_3.gpkg"
    assert first.read_bytes() == b"taken"  # never overwritten
    assert run_output_path("search", project, settings, WHEN).name == "rs_vlm_search_20261123_140309.gpkg"


def test_run_output_path_saved_project_wins_over_the_folder(project, tmp_path):
    from rs_vlm_plugin.qgis_shell.outputs import RUNS_FOLDER, run_output_path
    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    home = tmp_path / "work"
    home.mkdir()
    assert project.write(str(home / "survey.qgz"))
    path = run_output_path("classify", project, PluginSettings(output_folder=str(tmp_path / "elsewhere")), WHEN)
    assert path == home / RUNS_FOLDER / "rs_vlm_classify_20261123_140309.gpkg"
    assert path.parent.is_dir() and not (tmp_path / "elsewhere").exists()


def test_run_output_path_folder_that_cannot_be_made(project, tmp_path):
    from rs_vlm_plugin.core.errors import RsVlmError
    from rs_vlm_plugin.qgis_shell.outputs import run_output_path
    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RsVlmError, match="Could not create the output folder .* choose another output folder"):
        run_output_path("describe", project, PluginSettings(output_folder=str(blocker / "runs")), WHEN)


# Styles ---------------------------------------------------------------------------------------


def _result_layers() -> dict[str, list]:
    objects = [r for r in caption_records() if r.level == "object"]
    hits = [SearchHit("houses", k, 0.5 - 0.05 * k, "object", 2, r.extent, 0.29, r.caption, "scene")
            for k, r in enumerate(objects[:5], start=1)]
    evidence = [EvidenceRecord("Is there a house?", "Yes", k, 0.4 - 0.03 * k, "object", 2, r.extent, r.caption, "scene")
                for k, r in enumerate(objects[:4], start=1)]
    classes = [ClassRecord(("forest", "water", "farmland")[k % 3], 0.5, "town", "object", 2, r.extent, 0.29, "scene")
               for k, r in enumerate(objects)]
    layers = {name: [r for r in caption_records() if r.level == level] for level, name in CAPTION_LAYERS.items()}
    layers.update({"captions": caption_records(), SEARCH_LAYER: hits, EVIDENCE_LAYER: evidence, CLASS_LAYER: classes})
    return layers


def _crs_wkt() -> str:
    from qgis.core import QgsCoordinateReferenceSystem

    return QgsCoordinateReferenceSystem(UTM).toWkt()


def _symbol_of(layer, feature):
    """The symbol the layer's renderer draws a feature with (exactly one expected)."""
    from qgis.core import QgsExpressionContextUtils, QgsRenderContext

    context = QgsRenderContext()
    context.expressionContext().appendScopes(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
    renderer = layer.renderer().clone()
    renderer.startRender(context, layer.fields())
    try:
        context.expressionContext().setFeature(feature)
        symbols = renderer.symbolsForFeature(feature, context)
        assert len(symbols) == 1, f"{len(symbols)} symbols for feature {feature.id()} of {layer.name()}"
        return symbols[0].clone()
    finally:
        renderer.stopRender(context)


def _map_tip(layer, feature) -> str:
    """The layer's map tip for a feature, expressions evaluated."""
    from qgis.core import QgsExpression, QgsExpressionContext, QgsExpressionContextUtils

    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
    context.setFeature(feature)
    return QgsExpression.replaceExpressionText(layer.mapTipTemplate(), context)


def _display(layer, feature) -> str:
    from qgis.core import QgsExpression, QgsExpressionContext, QgsExpressionContextUtils

    context = QgsExpressionContext(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
    context.setFeature(feature)
    return str(QgsExpression(layer.displayExpression()).evaluate(context))


def test_every_style_file_is_shipped():
    from rs_vlm_plugin.qgis_shell.layers import STYLE_FILES, STYLES_DIR, style_key

    for key, name in STYLE_FILES.items():
        text = (STYLES_DIR / name).read_text(encoding="utf-8")
        assert "<mapTip>" in text and "<previewExpression>" in text and 'labelsEnabled="1"' in text, name
    keys = {style_key(n) for n in [*CAPTION_LAYERS.values(), "captions", SEARCH_LAYER, EVIDENCE_LAYER, CLASS_LAYER,
                                   PLAN_LAYER, "search_outlines"]}
    assert keys == set(STYLE_FILES)
    assert style_key("something_else") is None


def test_styles_load_onto_real_result_layers(project, tmp_path):
    from qgis.core import (
        QgsCategorizedSymbolRenderer,
        QgsGraduatedSymbolRenderer,
        QgsRuleBasedLabeling,
        QgsRuleBasedRenderer,
        QgsVectorLayerSimpleLabeling,
    )
    from qgis.PyQt.QtGui import QColor

    from rs_vlm_plugin.qgis_shell.layers import CAPTION_STYLES, CLASS_PALETTE, HIT_COLOURS, open_layer, style_layer

    gpkg = write_geopackage(tmp_path / "results.gpkg", _result_layers(), _crs_wkt())
    expected = {
        "captions_global": QgsRuleBasedRenderer, "captions_region": QgsRuleBasedRenderer,
        "captions_object": QgsRuleBasedRenderer, "captions": QgsRuleBasedRenderer,
        SEARCH_LAYER: QgsGraduatedSymbolRenderer, EVIDENCE_LAYER: QgsGraduatedSymbolRenderer,
        CLASS_LAYER: QgsCategorizedSymbolRenderer,
    }
    for name, renderer_type in expected.items():
        layer = open_layer(gpkg, name)
        assert layer.isValid()
        style_layer(layer, name)
        assert isinstance(layer.renderer(), renderer_type), name
        assert layer.labelsEnabled() and layer.labeling() is not None, name
        assert "[%" in layer.mapTipTemplate() and layer.displayExpression(), name
        feature = next(layer.getFeatures())
        tip = _map_tip(layer, feature)
        assert "[%" not in tip, name
        display = _display(layer, feature)
        assert display and display != "NULL", name
        if renderer_type is QgsRuleBasedRenderer:  # captions: outline colour and width by level
            assert feature["caption"] in tip and feature["concepts"] in tip and feature["caption"] in display
            colour, width, _, _ = CAPTION_STYLES[feature["level"]]
            symbol = _symbol_of(layer, feature)  # keep it: the symbol layer belongs to it
            fill = symbol.symbolLayer(0)
            assert fill.strokeColor() == QColor(colour) and fill.strokeWidth() == pytest.approx(width)
            assert fill.brushStyle() == 0  # Qt.NoBrush: the image shows through
            assert isinstance(layer.labeling(), QgsRuleBasedLabeling)
            rules = layer.labeling().rootRule().children()
            assert {r.settings().fieldName for r in rules} == {"caption"} and len(rules) == 3
        if renderer_type is QgsGraduatedSymbolRenderer:  # breaks over this layer's scores
            renderer = layer.renderer()
            scores = [f["score"] for f in layer.getFeatures()]
            assert renderer.classAttribute() == "score" and len(renderer.ranges()) >= 2
            assert renderer.ranges()[0].lowerValue() == pytest.approx(min(scores))
            assert renderer.ranges()[-1].upperValue() == pytest.approx(max(scores))
            assert renderer.ranges()[0].symbol().color().name() == HIT_COLOURS[0]
            assert renderer.ranges()[-1].symbol().color().name() == HIT_COLOURS[1]
            assert isinstance(layer.labeling(), QgsVectorLayerSimpleLabeling)
            assert "rank" in layer.labeling().settings().fieldName
            assert f"{feature['score']:.3f}" in tip and feature["caption"] in tip
        if renderer_type is QgsCategorizedSymbolRenderer:  # categories come from the data
            categories = layer.renderer().categories()
            assert [c.value() for c in categories] == ["farmland", "forest", "water"]
            assert [c.symbol().color().name() for c in categories] == [c.lower() for c in CLASS_PALETTE[:3]]
            assert feature["class"] in tip and "runner-up: town" in tip


def test_batch_layer_style_tells_levels_and_source(project, tmp_path):
    from rs_vlm_plugin.qgis_shell.layers import CAPTION_STYLES, display_name, open_layer, style_layer

    gpkg = write_geopackage(tmp_path / "batch.gpkg", {"captions": caption_records("north") + caption_records("south")},
                            _crs_wkt())
    layer = open_layer(gpkg, "captions", display_name("captions"))
    style_layer(layer, "captions")
    colours = {}
    for feature in layer.getFeatures():
        symbol = _symbol_of(layer, feature)
        colours.setdefault(feature["level"], set()).add(symbol.symbolLayer(0).strokeColor().name())
        assert f"from {feature['source']}" in _map_tip(layer, feature)
    assert colours == {level: {style[0]} for level, style in CAPTION_STYLES.items()}


def test_plan_layer_is_written_and_styled(project, rasters, tmp_path):
    from qgis.core import QgsRuleBasedRenderer
    from qgis.PyQt.QtGui import QColor

    from rs_vlm_plugin.core.planning.dris import PlanConfig
    from rs_vlm_plugin.core.gpkg import read_layer_names
    from rs_vlm_plugin.core.encoding.tiles import make_plan
    from rs_vlm_plugin.core.raster import open_raster
    from rs_vlm_plugin.core.records import PlanTileRecord
    from rs_vlm_plugin.qgis_shell.layers import PLAN_DEPTH_COLOURS, add_result_layers, display_name

    source = open_raster(rasters["scene"])
    plan = make_plan(source, source.georef.extent, PlanConfig(max_tiles=10), 224)
    assert plan.max_depth >= 1  # the scene's busy half is refined: several depths to tell apart
    records = plan_records(plan, source.georef.metres_per_unit, "scene")
    gpkg = write_geopackage(tmp_path / "plan.gpkg", {PLAN_LAYER: records}, source.georef.crs_wkt,
                            kinds={PLAN_LAYER: PlanTileRecord})
    assert read_layer_names(gpkg) == [PLAN_LAYER]
    (layer,) = add_result_layers(gpkg, [PLAN_LAYER], "RS-VLM plan", project=project)
    assert layer.name() == display_name(PLAN_LAYER) == "DRIS plan (where compute went)"
    assert layer.crs().authid() == UTM and layer.featureCount() == len(plan.nodes)
    assert isinstance(layer.renderer(), QgsRuleBasedRenderer) and layer.labelsEnabled()
    by_key = {t.key: t for t in plan.nodes}
    leaves = 0
    for feature in layer.getFeatures():
        tile = by_key[feature["key"]]
        assert feature["depth"] == tile.depth and bool(feature["is_leaf"]) == tile.is_leaf
        assert feature["gsd_m"] == pytest.approx(tile.gsd * source.georef.metres_per_unit)
        symbol = _symbol_of(layer, feature)
        stroke = symbol.symbolLayer(0)
        if tile.is_leaf:
            leaves += 1
            assert stroke.strokeColor() == QColor(PLAN_DEPTH_COLOURS[min(tile.depth, len(PLAN_DEPTH_COLOURS) - 1)])
        else:
            assert stroke.strokeStyle() != 1  # split nodes: dashed, not solid
        tip = _map_tip(layer, feature)
        assert f"complexity {tile.complexity:.2f}" in tip and "gsd " in tip and "m/pixel" in tip
    assert leaves == plan.n_tiles


def test_make_styles_script_writes_loadable_styles(qgis_app, tmp_path):
    """The script behind `build.py styles` rebuilds every file (written to tmp_path here)."""
    import importlib.util

    from qgis.core import QgsVectorLayer

    from rs_vlm_plugin.qgis_shell.layers import STYLE_CATEGORIES, STYLE_FILES

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("make_styles", repo / "scripts" / "make_styles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write_styles(tmp_path / "styles")
    assert sorted(p.name for p in written) == sorted(STYLE_FILES.values())
    gpkg = write_geopackage(tmp_path / "hits.gpkg", {SEARCH_LAYER: _result_layers()[SEARCH_LAYER]}, _crs_wkt())
    layer = QgsVectorLayer(f"{gpkg}|layername={SEARCH_LAYER}", "hits", "ogr")
    message, ok = layer.loadNamedStyle(str(tmp_path / "styles" / STYLE_FILES[SEARCH_LAYER]), STYLE_CATEGORIES)
    assert ok, message
    assert layer.mapTipTemplate() and layer.labelsEnabled()
