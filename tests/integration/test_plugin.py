"""The plugin in a real headless QGIS: loading, Processing registration, toolbar/menu/panel,
the background task and the result layers."""

from __future__ import annotations

import configparser
import subprocess
import sys

import pytest
from conftest import REPO, MinimalIface, caption_records, raster_layer, wait_for

from rs_vlm_plugin.core.gpkg import write_geopackage
from rs_vlm_plugin.core.jobs.results import CAPTION_LAYERS, SEARCH_LAYER, DescribeResult
from rs_vlm_plugin.core.records import SearchHit

ALGORITHMS = {"caption_raster", "search_raster", "classify_raster", "ask_raster", "batch_caption", "export_model",
              "build_index", "search_index", "import_model", "install_model"}


def test_package_imports_without_qgis():
    code = ("import sys, rs_vlm_plugin; "
            "bad = sorted(m for m in sys.modules if m == 'qgis' or m.startswith(('qgis.', 'PyQt5'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, f"importing rs_vlm_plugin imported {done.stdout.strip()}"


def test_metadata_is_complete():
    import rs_vlm_plugin

    parser = configparser.ConfigParser()
    parser.read(REPO / "rs_vlm_plugin" / "metadata.txt", encoding="utf-8")
    general = parser["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "repository", "tracker", "icon"):
        assert general.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert general["name"] == "RS-VLM"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["version"] == rs_vlm_plugin.__version__
    assert general["hasProcessingProvider"] == "yes"
    assert (REPO / "rs_vlm_plugin" / general["icon"]).is_file()


def test_processing_only_lifecycle(plugin):
    """classFactory(None) as in qgis_process: initProcessing adds the provider, unload removes it."""
    from qgis.core import QgsApplication

    import rs_vlm_plugin

    registry = QgsApplication.processingRegistry()
    plugin.unload()  # the session's copy steps aside so this one can register
    try:
        assert registry.providerById("rsvlm") is None
        own = rs_vlm_plugin.classFactory(None)
        own.initGui()  # without iface only the provider is added
        provider = registry.providerById("rsvlm")
        assert provider is not None and provider.name() == "RS-VLM"
        assert {alg.name() for alg in provider.algorithms()} == ALGORITHMS
        assert not provider.icon().isNull()
        own.initProcessing()  # a second call adds nothing
        assert len([p for p in registry.providers() if p.id() == "rsvlm"]) == 1
        own.unload()
        assert registry.providerById("rsvlm") is None
        own.unload()  # unloading twice is harmless
    finally:
        plugin.initProcessing()
    assert registry.providerById("rsvlm") is not None


def test_second_copy_leaves_the_registered_provider_alone(plugin):
    from qgis.core import QgsApplication

    import rs_vlm_plugin

    other = rs_vlm_plugin.classFactory(None)
    other.initProcessing()
    assert other.provider is None
    other.unload()
    assert QgsApplication.processingRegistry().providerById("rsvlm") is plugin.provider


def test_gui_lifecycle_with_a_minimal_iface(plugin, iface):
    from qgis.PyQt.QtWidgets import QToolBar

    import rs_vlm_plugin

    gui = rs_vlm_plugin.classFactory(iface)
    gui.initGui()
    try:
        toolbars = [t for t in iface.window.findChildren(QToolBar) if t.objectName() == "RsVlmToolbar"]
        assert len(toolbars) == 1
        texts = [a.text() for a in toolbars[0].actions()]
        assert "Describe visible extent" in texts and "RS-VLM panel" in texts
        menu = iface.plugin_menus["&RS-VLM"]
        assert [a.text() for a in menu.actions()] == ["Describe visible extent", "RS-VLM panel", "Settings…",
                                                 "Check dependencies…"]
        assert gui.dock is not None and not gui.dock.isVisible()
        gui.dock_action.setChecked(True)
        assert gui.dock.isVisibleTo(iface.window)
        gui.dock_action.setChecked(False)
        assert not gui.dock.isVisibleTo(iface.window)
    finally:
        gui.unload()
    assert "&RS-VLM" not in iface.plugin_menus
    assert gui.dock is None and gui.toolbar is None
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)  # run the deleteLater()s
    assert not [t for t in iface.window.findChildren(QToolBar) if t.objectName() == "RsVlmToolbar"]


def test_describe_without_a_raster_says_what_to_do(plugin, iface, project):
    import rs_vlm_plugin

    gui = rs_vlm_plugin.classFactory(iface)
    gui.initGui()
    try:
        gui.describe_visible_extent()
        assert gui.task is None
        assert any("raster layer" in text for text in iface.messages())
    finally:
        gui.unload()


def _hits(query: str = "houses") -> list[SearchHit]:
    tiles = [r for r in caption_records() if r.level == "object"][:5]
    return [SearchHit(query, rank, 0.5 - 0.05 * rank, "object", 2, r.extent, 0.29, r.caption, "scene")
            for rank, r in enumerate(tiles, start=1)]


def test_result_layers_are_grouped_styled_and_labelled(qgis_app, project, tmp_path):
    from qgis.core import (
        QgsExpressionContextUtils,
        QgsGraduatedSymbolRenderer,
        QgsRenderContext,
        QgsRuleBasedLabeling,
        QgsRuleBasedRenderer,
    )

    from rs_vlm_plugin.core.jobs.results import result_layers
    from rs_vlm_plugin.qgis_shell.layers import add_result_layers, open_layer, run_group_name, style_layer

    wkt = raster_layer_crs_wkt()
    result = DescribeResult(caption_records(), None, wkt, [])
    gpkg = write_geopackage(tmp_path / "describe.gpkg", result_layers(result), wkt)
    name = run_group_name("describe")
    assert name.startswith("RS-VLM describe 20")
    added = add_result_layers(gpkg, list(CAPTION_LAYERS.values()), name, project=project)
    group = project.layerTreeRoot().findGroup(name)
    assert group is not None and project.layerTreeRoot().children()[0] is group
    assert [layer.name() for layer in added] == ["Object captions", "Region captions", "Global caption"]
    assert [node.layer() for node in group.findLayers()] == added
    widths = []
    for layer in added:
        assert layer.crs().authid() == "EPSG:26914"
        renderer = layer.renderer().clone()  # rule-based: one rule per level (resources/styles/captions.qml)
        assert isinstance(renderer, QgsRuleBasedRenderer)
        assert len(renderer.rootRule().children()) == 1  # the legend shows the layer's own level only
        context = QgsRenderContext()
        context.expressionContext().appendScopes(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
        renderer.startRender(context, layer.fields())
        (symbol,) = renderer.symbolsForFeature(next(layer.getFeatures()), context)
        renderer.stopRender(context)
        fill = symbol.symbolLayer(0)
        assert fill.brushStyle() == 0  # Qt.NoBrush: transparent fill
        widths.append(fill.strokeWidth())
        assert layer.labelsEnabled()
        labeling = layer.labeling()
        assert isinstance(labeling, QgsRuleBasedLabeling)
        for rule in labeling.rootRule().children():
            assert rule.settings().fieldName == "caption"
            assert rule.settings().autoWrapLength > 0
    assert widths == sorted(widths) and len(set(widths)) == 3  # finer levels, thinner outlines

    hits = write_geopackage(tmp_path / "search.gpkg", {SEARCH_LAYER: _hits()}, wkt)
    (hit_layer,) = add_result_layers(hits, [SEARCH_LAYER], run_group_name("search", "houses"), "houses", project)
    assert hit_layer.name() == 'Search hits: "houses"'
    renderer = hit_layer.renderer()
    assert isinstance(renderer, QgsGraduatedSymbolRenderer)
    assert renderer.classAttribute() == "score" and len(renderer.ranges()) >= 2
    assert renderer.ranges()[0].symbol().color() != renderer.ranges()[-1].symbol().color()
    settings = hit_layer.labeling().settings()
    assert settings.isExpression and "rank" in settings.fieldName

    merged = write_geopackage(tmp_path / "batch.gpkg", {"captions": caption_records()}, wkt)
    layer = open_layer(merged, "captions")
    style_layer(layer, "captions")
    assert isinstance(layer.renderer(), QgsRuleBasedRenderer)
    assert {r.filterExpression() for r in layer.renderer().rootRule().children()} == {
        f"\"level\" = '{level}'" for level in ("global", "region", "object")}


def raster_layer_crs_wkt() -> str:
    from qgis.core import QgsCoordinateReferenceSystem

    return QgsCoordinateReferenceSystem("EPSG:26914").toWkt()


def test_empty_result_layers_are_left_out(qgis_app, project, tmp_path):
    from rs_vlm_plugin.qgis_shell.layers import add_result_layers

    gpkg = write_geopackage(tmp_path / "empty.gpkg", {SEARCH_LAYER: []}, raster_layer_crs_wkt(),
                            kinds={SEARCH_LAYER: SearchHit})
    assert add_result_layers(gpkg, [SEARCH_LAYER], "RS-VLM search", project=project) == []
    assert project.layerTreeRoot().findGroup("RS-VLM search") is None


# The background task ------------------------------------------------------------------------


def _request(kind, layer, tmp_path, model_dir=None, query="", max_tiles=6):
    from rs_vlm_plugin.core.planning.dris import PlanConfig
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.qgis_shell.source import QgsLayerSource
    from rs_vlm_plugin.qgis_shell.task import JobRequest

    return JobRequest(kind, QgsLayerSource(layer), None, JobConfig(plan=PlanConfig(max_tiles=max_tiles)),
                      query=query, model_dir=model_dir, output=tmp_path / f"{kind}.gpkg")


def test_task_reports_a_missing_model_as_a_sentence(qgis_app, rasters, tmp_path, iface):
    from rs_vlm_plugin.qgis_shell.task import RsVlmTask

    empty = tmp_path / "no_model"
    empty.mkdir()
    task = RsVlmTask(_request("describe", raster_layer(rasters["scene"]), tmp_path, model_dir=empty), iface)
    failures = []
    task.jobFailed.connect(failures.append)
    assert task.run() is False
    task.finished(False)
    assert failures and "manifest.json is missing" in failures[0]
    assert any("manifest.json is missing" in text for text in iface.messages())
    assert not (tmp_path / "describe.gpkg").exists()


def test_task_runs_in_the_task_manager(qgis_app, rasters, tmp_path, bundle_dir, iface):
    from qgis.core import QgsApplication

    from rs_vlm_plugin.core.gpkg import read_layer_names
    from rs_vlm_plugin.qgis_shell.task import RsVlmTask

    task = RsVlmTask(_request("describe", raster_layer(rasters["scene"]), tmp_path), iface)
    outcomes, stages, progress = [], [], []
    task.jobFinished.connect(outcomes.append)
    task.stageChanged.connect(stages.append)
    task.progressChanged.connect(progress.append)
    QgsApplication.taskManager().addTask(task)
    wait_for(lambda: outcomes or task.error, timeout_s=300)
    assert task.error is None, task.error
    (outcome,) = outcomes
    assert outcome.output == tmp_path / "describe.gpkg" and outcome.output.exists()
    assert read_layer_names(outcome.output) == list(CAPTION_LAYERS.values())
    assert outcome.result.global_caption
    assert stages and stages[0] == "Loading the model"
    assert progress and max(progress) == pytest.approx(100.0)


def test_task_cancel_between_batches(qgis_app, rasters, tmp_path, bundle_dir, iface):
    from rs_vlm_plugin.qgis_shell.task import RsVlmTask

    task = RsVlmTask(_request("search", raster_layer(rasters["scene"]), tmp_path, query="houses"), iface)
    failures = []
    task.jobFailed.connect(failures.append)
    task.progressChanged.connect(lambda value: task.cancel())  # cancel at the first progress report
    assert task.run() is False
    task.finished(False)
    assert task.cancelled and failures and "cancelled" in failures[0]
    assert not (tmp_path / "search.gpkg").exists()


def test_plugin_describes_the_visible_extent(plugin, rasters, tmp_path, bundle_dir, project):
    """The toolbar action end to end: canvas extent -> task -> styled layers and panel list."""
    import rs_vlm_plugin
    from qgis.core import QgsRectangle

    iface = MinimalIface()
    layer = raster_layer(rasters["scene"])
    project.addMapLayer(layer)
    iface.active_layer = layer
    iface.canvas.setDestinationCrs(layer.crs())
    iface.canvas.resize(400, 400)
    iface.canvas.setExtent(QgsRectangle(500000.0, 4099872.0, 500128.0, 4100000.0))  # the top-left quarter
    gui = rs_vlm_plugin.classFactory(iface)
    gui.initGui()
    try:
        gui.dock.budget_spin.setValue(6)
        task = gui.start_job("describe", layer, output=tmp_path / "visible.gpkg")
        assert task is not None and gui.dock.cancel_button.isEnabled()
        assert gui.start_job("describe", layer) is None  # one job at a time
        wait_for(lambda: gui.task is None, timeout_s=300)
        assert task.error is None, task.error
        groups = [g for g in project.layerTreeRoot().children() if "RS-VLM describe" in g.name()]
        assert len(groups) == 1
        names = [node.layer().name() for node in groups[0].findLayers()]
        assert "Global caption" in names and "Region captions" in names
        assert gui.dock.results_list.count() > 0
        assert not gui.dock.cancel_button.isEnabled()
        plan_extent = task.outcome.result.plan.extent
        canvas = iface.canvas.extent()
        assert plan_extent.xmin >= canvas.xMinimum() - 1e-6 and plan_extent.ymin >= canvas.yMinimum() - 1e-6
        assert plan_extent.xmax <= canvas.xMaximum() + 1e-6 and plan_extent.ymax <= canvas.yMaximum() + 1e-6
    finally:
        gui.unload()
        iface.window.deleteLater()
