"""The RS-VLM panel driven like a user in a real headless QGIS: modes, scope, mask, index,
results list, live score filter, zoom; with the real model on generated rasters."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MinimalIface, raster_layer, wait_for

from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.jobs.results import AnswerResult, ClassifyResult, DescribeResult, SearchResult
from rs_vlm_plugin.core.qa import parse_question
from rs_vlm_plugin.core.records import CaptionRecord, ClassRecord, EvidenceRecord, SearchHit


@pytest.fixture()
def stored_settings(qgis_app, tmp_path):
    """The plugin settings with the output folder in tmp_path; the user's settings restored after."""
    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    before = PluginSettings.load()
    settings = PluginSettings(output_folder=str(tmp_path / "runs"))
    settings.save()
    yield settings
    before.save()


@pytest.fixture()
def gui(plugin, stored_settings, rasters, project):
    """The plugin with a real (minimal) QGIS interface and the generated scene in the project."""
    import rs_vlm_plugin

    shell = MinimalIface()
    layer = raster_layer(rasters["scene"])
    project.addMapLayer(layer)
    shell.active_layer = layer
    shell.canvas.setDestinationCrs(layer.crs())
    shell.canvas.resize(400, 400)
    shell.canvas.setExtent(layer.extent())
    instance = rs_vlm_plugin.classFactory(shell)
    instance.initGui()
    instance.dock.layer_combo.setLayer(layer)
    instance.dock.budget_spin.setValue(6)
    instance.layer = layer
    yield instance
    instance.unload()
    shell.window.deleteLater()


def run(gui, mode: str, query: str = "", scope: str = "layer", button: str = "run"):
    """Set the panel up, press a button and wait for the job; returns the finished task."""
    dock = gui.dock
    dock.set_mode(mode)
    dock.query_edit.setText(query)
    dock.scope_combo.setCurrentIndex(dock.scope_combo.findData(scope))
    (dock.index_button if button == "index" else dock.run_button).click()
    task = gui.task
    assert task is not None, dock.status_label.text()
    assert dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
    wait_for(lambda: gui.task is None, timeout_s=300)
    assert task.error is None, task.error
    return task


def _extent() -> Extent:
    return Extent(500000.0, 4099744.0, 500256.0, 4100000.0)


# The panel alone ----------------------------------------------------------------------------


def test_modes_enable_run_and_request_what_the_panel_shows(qgis_app, rasters, project):
    from qgis.core import QgsVectorLayer

    from rs_vlm_plugin.core.locate.boxes import ANSWERS, BoxConfig
    from rs_vlm_plugin.qgis_shell.dock import DETAIL_STEPS, RsVlmDock

    raster = raster_layer(rasters["scene"])
    polygons = QgsVectorLayer("Polygon?crs=EPSG:26914", "fields", "memory")
    project.addMapLayers([raster, polygons])
    dock = RsVlmDock(models=[("rs-vlm-lite0", Path("/models/rs-vlm-lite0")), ("georsclip", Path("/models/g"))])
    assert [dock.layer_combo.itemText(i) for i in range(dock.layer_combo.count())] == ["scene"]
    assert dock.mode() == "describe" and dock.run_button.isEnabled() and not dock.query_combo.isEnabled()
    # the answer options: only search and ask draw what they find
    assert [dock.answers_combo.itemData(i) for i in range(dock.answers_combo.count())] == list(ANSWERS)
    assert not dock.answers_combo.isEnabled() and not dock.box_score_spin.isEnabled()
    dock.set_mode("search")
    assert dock.run_button.text() == "Search" and not dock.run_button.isEnabled()  # no text yet
    assert dock.answers_combo.isEnabled() and dock.answers_combo.currentData() == "auto"
    assert dock.box_score_spin.isEnabled() and dock.box_score_spin.value() == BoxConfig().min_score
    dock.query_edit.setText("  storage tanks ")
    assert dock.run_button.isEnabled()
    dock.set_mode("classify")
    dock.query_edit.setText("")
    assert dock.run_button.isEnabled()  # no classes: the knowledge base's scene types
    assert not dock.answers_combo.isEnabled()
    dock.set_mode("ask")
    assert not dock.run_button.isEnabled()
    dock.answers_combo.setCurrentIndex(dock.answers_combo.findData("outlines"))
    assert dock.answers_combo.isEnabled() and not dock.box_score_spin.isEnabled()  # outlines have no box score
    dock.answers_combo.setCurrentIndex(dock.answers_combo.findData("boxes"))
    assert dock.box_score_spin.isEnabled()
    dock.box_score_spin.setValue(0.3)
    dock.query_edit.setText("Is there a road?")
    dock.detail_slider.setValue(0)
    assert dock.max_tiles() == DETAIL_STEPS[0]
    dock.budget_spin.setValue(100)
    assert dock.detail_slider.value() == DETAIL_STEPS.index(96)
    dock.model_combo.setCurrentIndex(1)
    dock.plan_check.setChecked(True)
    requests = []
    dock.runRequested.connect(requests.append)
    dock.run_button.click()
    (request,) = requests
    assert (request.mode, request.query, request.layer, request.max_tiles) == ("ask", "Is there a road?", raster, 100)
    assert request.model_dir == Path("/models/g") and request.show_plan and request.scope == "visible"
    assert request.answers == "boxes" and request.boxes == BoxConfig(min_score=0.3)

    dock.scope_combo.setCurrentIndex(dock.scope_combo.findData("selection"))
    assert dock.mask_combo.isVisibleTo(dock) and dock.mask_combo.currentLayer() is polygons
    dock.set_history(["a river", "houses"])
    assert [dock.query_combo.itemText(i) for i in range(dock.query_combo.count())] == ["a river", "houses"]
    assert dock.query() == "Is there a road?"  # the history does not replace what is typed
    dock.set_running(True)
    assert dock.cancel_button.isEnabled() and not dock.run_button.isEnabled() and not dock.layer_combo.isEnabled()
    dock.set_running(False)
    dock.deleteLater()


def test_results_list_threshold_and_click(qgis_app):
    from rs_vlm_plugin.qgis_shell.dock import RsVlmDock

    dock = RsVlmDock()
    whole = _extent()
    records = [CaptionRecord("global", 0, whole, 1.0, "A town beside fields.", [("town", 0.6)], 0.6)]
    records += [CaptionRecord("region", 1, q, 0.5, f"Region {i}.", [("field", 0.1 * i)], 0.1 * (i + 1))
                for i, q in enumerate(whole.quadrants())]
    dock.show_result(DescribeResult(records, None, "WKT", []))
    assert dock.answer_label.text() == "A town beside fields."  # the global caption on top
    assert dock.results_list.count() == 5 and dock.results_list.item(0).text().startswith("Global")
    thresholds = []
    dock.thresholdChanged.connect(thresholds.append)
    dock.set_threshold(0.35)
    assert thresholds and thresholds[-1] == pytest.approx(0.35, abs=0.01)
    assert dock.visible_results() == 2  # 0.6 and 0.4 pass; 0.1, 0.2 and 0.3 are hidden
    clicks = []
    dock.resultActivated.connect(lambda extent, wkt: clicks.append((extent, wkt)))
    dock.results_list.itemClicked.emit(dock.results_list.item(0))
    assert clicks == [(whole, "WKT")]

    hits = [SearchHit("houses", k, 0.5 - 0.1 * k, "object", 2, q, 0.3, f"Tile {k}.") for k, q in
            enumerate(whole.quadrants(), start=1)]
    dock.show_result(SearchResult("houses", hits, [], None, None, []))
    assert dock.visible_results() == 4 and "4 places" in dock.status_label.text()  # a new result shows all
    classes = [ClassRecord("forest" if k % 2 else "water", 0.5 + 0.1 * k, "field", "object", 1, q, 0.5)
               for k, q in enumerate(whole.quadrants())]
    dock.show_result(ClassifyResult(["forest", "water"], classes, [("forest", 0.7)], None, None, []))
    assert dock.answer_label.text() == "Scene: forest." and "forest 50 %" in dock.status_label.text()
    question = parse_question("Is there a road?")
    evidence = [EvidenceRecord(question.text, "Yes: road is likely here.", 1, 0.8, "object", 2, whole, "A road.")]
    dock.show_result(AnswerResult(question, "Yes: road is likely here.", True, evidence, None, None, []))
    assert dock.answer_label.text() == "Yes: road is likely here." and dock.results_list.count() == 1
    dock.deleteLater()


# The panel with the plugin and the real model ----------------------------------------------


def test_describe_whole_layer_with_the_dris_plan(gui, bundle_dir, stored_settings):
    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    gui.dock.plan_check.setChecked(True)
    task = run(gui, "describe")
    outcome = task.outcome
    assert outcome.output.parent == Path(stored_settings.output_folder)
    assert outcome.written[0] == "dris_plan" and "captions_global" in outcome.written
    names = [layer.name() for layer in gui.result_layers]
    assert any("DRIS" in name for name in names), names
    assert gui.dock.answer_label.text() == outcome.result.global_caption != ""
    layer_extent = gui.layer.extent()
    assert outcome.result.plan.extent.width == pytest.approx(layer_extent.width())  # scope: the whole layer
    assert gui.last_timings["click_to_layers_s"] >= gui.last_timings["job_s"] > 0
    remembered = PluginSettings.load()
    assert remembered.mode == "describe" and remembered.show_plan and remembered.scope == "layer"

    second = run(gui, "describe")
    assert second.outcome.output != outcome.output and outcome.output.exists()  # never overwritten


def test_score_threshold_filters_the_result_layer(gui, bundle_dir):
    from qgis.core import QgsPointXY

    from rs_vlm_plugin.core.jobs.results import SEARCH_LAYER, SEARCH_OUTLINE_LAYER

    task = run(gui, "search", "a road")
    # a search writes its outlines beside the hits; the panel loads the layers that have features
    assert task.outcome.written == [SEARCH_LAYER, SEARCH_OUTLINE_LAYER]
    outlines = task.outcome.result.outlines
    assert outlines is not None and len(gui.result_layers) == 1 + bool(outlines)
    (layer,) = [lyr for lyr in gui.result_layers if "shape" not in lyr.fields().names()]
    scores = sorted(hit.score for hit in task.outcome.result.hits)
    assert layer.featureCount() == len(scores) >= 3
    gui.dock.set_threshold(scores[len(scores) // 2])
    shown = gui.dock.visible_results()
    assert 0 < shown < len(scores)
    assert '"score" >=' in layer.subsetString() and layer.featureCount() == shown
    gui.dock.set_threshold(scores[0])
    assert layer.featureCount() == len(scores)

    # Zoom to the best hit. The canvas starts zoomed out well beyond the layer: a text-guided plan
    # never reads finer than native, so on this small raster the best tile may cover most of it.
    zoomed_out = gui.layer.extent()
    zoomed_out.scale(4.0)
    gui.iface.canvas.setExtent(zoomed_out)
    before = gui.iface.canvas.extent()
    gui.dock.results_list.itemClicked.emit(gui.dock.results_list.item(0))
    best = task.outcome.result.hits[0].extent
    canvas = gui.iface.canvas.extent()
    assert canvas.contains(QgsPointXY(*best.center))
    assert min(canvas.width(), canvas.height()) < 0.7 * min(before.width(), before.height())  # zoomed in on it
    # fitted to the hit (with a 10 % margin) along at least one side
    assert (canvas.width() <= 1.11 * best.width + 1e-6) or (canvas.height() <= 1.11 * best.height + 1e-6)
    assert canvas.width() >= best.width - 1e-6 and canvas.height() >= best.height - 1e-6


def test_the_panel_answer_options_reach_the_job(gui, bundle_dir):
    from rs_vlm_plugin.core.locate.boxes import BoxConfig

    dock = gui.dock
    dock.set_mode("search")
    dock.answers_combo.setCurrentIndex(dock.answers_combo.findData("outlines"))
    dock.box_score_spin.setValue(0.35)
    task = run(gui, "search", "storage tanks")
    config = task.request.config
    assert (config.answers, config.boxes) == ("outlines", BoxConfig(min_score=0.35))
    outlines = task.outcome.result.outlines
    assert outlines is not None and all(o.found_by == "relevance" for o in outlines)  # outlines, whatever the query


def test_score_threshold_filters_hits_and_outlines_each_over_their_own_range(gui, tmp_path):
    """The plugin's layer filter (subset strings) follows the slider over each kind's own range:
    hits (cosine, about 0.1-0.4) and outlines (calibrated relevance, about 0.99-1)."""
    from shapely.geometry import box

    from rs_vlm_plugin.core.gpkg import write_geopackage
    from rs_vlm_plugin.core.jobs.results import SEARCH_LAYER, SEARCH_OUTLINE_LAYER
    from rs_vlm_plugin.core.records import OutlineRecord
    from rs_vlm_plugin.qgis_shell.layers import add_result_layers

    whole = _extent()
    hits = [SearchHit("houses", k, score, "object", 2, q, 0.5, f"Tile {k}.", "scene")
            for k, (score, q) in enumerate(zip((0.40, 0.30, 0.20, 0.10), whole.quadrants()), start=1)]
    outlines = []
    for rank, score in enumerate((0.998, 0.995, 0.991), start=1):
        shape = box(whole.xmin + 40 * rank, whole.ymin + 10, whole.xmin + 40 * rank + 20, whole.ymin + 30)
        outlines.append(OutlineRecord(query="houses", rank=rank, score=score, shape="box", cells=4, area_m2=shape.area,
                                      depth=2, gsd_m=0.5, extent=Extent(*shape.bounds), geometry_wkb=shape.wkb,
                                      source="scene"))
    crs = gui.layer.crs().toWkt()
    gpkg = write_geopackage(tmp_path / "run.gpkg", {SEARCH_LAYER: hits, SEARCH_OUTLINE_LAYER: outlines}, crs)
    gui.result_layers = add_result_layers(gpkg, [SEARCH_LAYER, SEARCH_OUTLINE_LAYER], "run", query="houses")
    layers = {("outlines" if "shape" in lyr.fields().names() else "hits"): lyr for lyr in gui.result_layers}
    assert set(layers) == {"hits", "outlines"}
    gui.dock.show_result(SearchResult("houses", hits, [], None, crs, [], {}, outlines))

    def shown() -> tuple[int, int]:  # the features each layer draws (read through its subset string)
        return sum(1 for _ in layers["hits"].getFeatures()), sum(1 for _ in layers["outlines"].getFeatures())

    assert shown() == (4, 3)

    gui.dock.threshold_slider.setValue(50)  # half way up each kind's range: 0.25 and 0.9945
    assert shown() == (2, 2)
    assert '"score" >=' in layers["hits"].subsetString() and '"score" >=' in layers["outlines"].subsetString()
    assert gui.dock.visible_results() == 4
    gui.dock.threshold_slider.setValue(100)  # the best of each
    assert shown() == (1, 1)
    gui.dock.threshold_slider.setValue(0)  # all of both again, no filter left
    assert shown() == (4, 3)
    assert layers["hits"].subsetString() == "" and layers["outlines"].subsetString() == ""


def test_selected_polygons_limit_the_tiles(gui, bundle_dir, project):
    from qgis.core import QgsFeature, QgsGeometry, QgsRectangle, QgsVectorLayer

    extent = gui.layer.extent()
    corner = QgsRectangle(extent.xMinimum(), extent.center().y(), extent.center().x(), extent.yMaximum())
    mask = QgsVectorLayer(f"Polygon?crs={gui.layer.crs().authid()}", "area of interest", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(corner))
    mask.dataProvider().addFeatures([feature])
    project.addMapLayer(mask)
    gui.dock.mask_combo.setLayer(mask)

    gui.dock.set_mode("classify")
    gui.dock.scope_combo.setCurrentIndex(gui.dock.scope_combo.findData("selection"))
    gui.dock.run_button.click()
    assert gui.task is None and "Nothing is selected" in gui.dock.status_label.text()

    mask.selectAll()
    task = run(gui, "classify", "forest, water, buildings", scope="selection")
    records = task.outcome.result.records
    assert records
    for record in records:
        e = record.extent
        assert e.xmin < corner.xMaximum() and e.ymax > corner.yMinimum()  # every tile touches the mask


def test_index_built_from_the_panel_answers_searches(gui, bundle_dir, stored_settings):
    from rs_vlm_plugin.core.jobs.results import SearchResult

    task = run(gui, "search", button="index")
    built = task.outcome.result
    assert built.path.exists() and built.path.parent == Path(stored_settings.output_folder) / "indexes"
    assert built.n_tiles > 0 and "Index of" in gui.dock.status_label.text()

    indexed = run(gui, "search", "a road")
    assert indexed.request.index_path == built.path
    assert "Answered from the layer's index" in gui.dock.status_label.text()
    assert isinstance(indexed.outcome.result, SearchResult) and indexed.outcome.result.hits
    direct = gui.start_job("search", gui.layer, "a road", extent=None, max_tiles=6,
                           output=Path(stored_settings.output_folder) / "direct.gpkg")
    assert direct.request.index_path is None
    wait_for(lambda: gui.task is None, timeout_s=300)
    assert direct.outcome.result.hits and direct.outcome.result.plan.config.native  # text-guided, to native
    # The index holds the complexity plan's tiles (it serves any query), so its answer equals a search
    # on that plan with the same budget; the panel's direct search is text-guided and plans otherwise.
    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.core.planning.dris import PlanConfig
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.core.jobs.search import search
    from rs_vlm_plugin.core.raster import open_raster

    config = JobConfig(plan=PlanConfig(max_tiles=6), guided=False, outlines=False)
    with open_raster(gui.layer.source()) as source:
        reference = search(source, ModelBundle.load(bundle_dir), "a road", config=config)
    ours = [(h.extent, round(h.score, 4)) for h in indexed.outcome.result.hits[:3]]
    theirs = [(h.extent, round(h.score, 4)) for h in reference.hits[:3]]
    assert ours == theirs


def test_settings_dialog_stores_and_lists_imported_models(gui, stored_settings, tmp_path, bundle_dir):
    import shutil

    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    models = tmp_path / "models"
    shutil.copytree(bundle_dir, models / "my-model", ignore=shutil.ignore_patterns("*.onnx"))
    (models / "not-a-model").mkdir()
    dialog = gui.show_settings(modal=False)
    dialog.models_widget.setFilePath(str(models))
    dialog.threads_spin.setValue(2)
    dialog.hits_spin.setValue(25)
    dialog.accept()
    stored = PluginSettings.load()
    assert (stored.models_folder, stored.threads, stored.max_hits) == (str(models), 2, 25)
    assert stored.output_folder == stored_settings.output_folder
    names = [gui.dock.model_combo.itemText(i) for i in range(gui.dock.model_combo.count())]
    assert names == ["rs-vlm-lite0", "my-model"]


def test_the_panel_finds_an_index_built_by_processing(gui, bundle_dir, stored_settings):
    import processing

    folder = Path(stored_settings.output_folder) / "indexes"
    folder.mkdir(parents=True)
    built = processing.run("rsvlm:build_index", {"INPUT": gui.layer, "MAX_TILES": 6,
                                                 "OUTPUT": str(folder / "from-processing.rsvlm-index.gpkg")})
    task = run(gui, "search", "a road")
    assert task.request.index_path == Path(built["OUTPUT"])


def test_import_a_clip_checkpoint_from_the_panel_and_describe_with_it(gui, stored_settings, tmp_path, bundle_dir):
    """Import… runs the real importer in a Python with torch; the bundle appears, chosen, in the picker
    and describes the raster (captions composed from the knowledge base: no decoder)."""
    import torch

    from rs_vlm_plugin.modeling.clip.configs import get_config
    from rs_vlm_plugin.modeling.clip.model import CLIP
    from rs_vlm_plugin.qgis_shell.settings import PluginSettings

    torch.manual_seed(0)
    checkpoint = tmp_path / "RemoteCLIP-tiny.pt"
    torch.save({"state_dict": CLIP(get_config("tiny-ViT-B-32")).state_dict()}, checkpoint)
    stored_settings.models_folder = str(tmp_path / "models")
    stored_settings.save()
    progress = []
    task = gui.import_model(checkpoint, arch="tiny-ViT-B-32")
    assert task is not None and gui.dock.cancel_button.isEnabled()
    task.progressChanged.connect(progress.append)
    wait_for(lambda: gui.task is None, timeout_s=300)
    assert task.error is None, task.error + "\n" + "\n".join(task.lines[-10:])
    folder = tmp_path / "models" / "RemoteCLIP-tiny"
    assert (folder / "manifest.json").exists() and progress and max(progress) == 100
    assert gui.dock.model_combo.currentText() == "RemoteCLIP-tiny" and PluginSettings.load().model == "RemoteCLIP-tiny"
    assert "is imported" in gui.dock.status_label.text()

    described = run(gui, "describe")
    assert described.request.model_dir == folder
    assert described.outcome.result.global_caption  # composed from the knowledge base

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    failed = gui.import_model(broken)
    wait_for(lambda: gui.task is None, timeout_s=300)
    assert failed.error and "broken.pt" in failed.error, failed.error
    assert not (tmp_path / "models" / "broken").exists()
