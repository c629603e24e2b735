"""The RS-VLM Processing algorithms through ``processing.run``, on generated GeoTIFFs and,
when present, the real demo image."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DEMO_SCENE, raster_layer

from rs_vlm_plugin.core.jobs.results import CAPTION_LAYERS, SEARCH_LAYER, SEARCH_OUTLINE_LAYER

MAX_TILES = 8  # small budgets keep the model runs short


@pytest.fixture()
def processing(plugin):
    import processing

    return processing


class RecordingFeedback:
    """A real QgsProcessingFeedback that also keeps what it was told (made lazily, after QGIS)."""

    @staticmethod
    def make(cancel_on_first_progress: bool = False):
        from qgis.core import QgsProcessingFeedback

        class Feedback(QgsProcessingFeedback):
            def __init__(self) -> None:
                super().__init__()
                self.errors: list[str] = []
                self.warnings: list[str] = []
                self.infos: list[str] = []
                self.progress: list[float] = []
                self.progressChanged.connect(self._on_progress)

            def _on_progress(self, value: float) -> None:
                self.progress.append(value)
                if cancel_on_first_progress:
                    self.cancel()

            def reportError(self, error, fatalError=False):  # noqa: N802, N803
                self.errors.append(error)
                super().reportError(error, fatalError)

            def pushWarning(self, warning):  # noqa: N802
                self.warnings.append(warning)
                super().pushWarning(warning)

            def pushInfo(self, info):  # noqa: N802
                self.infos.append(info)
                super().pushInfo(info)

        return Feedback()


def read_layer(gpkg, name):
    """(features as attribute dicts, the layer) of a GeoPackage layer."""
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr")
    assert layer.isValid(), f"{gpkg} has no layer {name}"
    features = []
    for feature in layer.getFeatures():
        row = {field.name(): feature[field.name()] for field in layer.fields()}
        row["_bbox"] = feature.geometry().boundingBox()
        features.append(row)
    return features, layer


def layer_names(gpkg) -> list[str]:
    from rs_vlm_plugin.core.gpkg import read_layer_names

    return read_layer_names(gpkg)


# Registration and parameters -------------------------------------------------------------


def test_algorithms_are_registered_with_upper_case_parameters(plugin):
    from qgis.core import QgsApplication

    registry = QgsApplication.processingRegistry()
    expected = {
        "rsvlm:caption_raster": ["INPUT", "EXTENT", "MAX_TILES", "MODEL", "OUTPUT", "GUIDE"],
        "rsvlm:search_raster": ["INPUT", "QUERY", "EXTENT", "MAX_TILES", "TOP_K", "OUTLINES", "ANSWERS", "MIN_SCORE",
                                "MAX_BOXES", "MODEL", "OUTPUT"],
        "rsvlm:classify_raster": ["INPUT", "CLASSES", "EXTENT", "MAX_TILES", "MODEL", "OUTPUT"],
        "rsvlm:ask_raster": ["INPUT", "QUESTION", "EXTENT", "MAX_TILES", "OUTLINES", "ANSWERS", "MIN_SCORE", "MAX_BOXES",
                             "MODEL", "OUTPUT"],
        "rsvlm:batch_caption": ["LAYERS", "FOLDER", "PATTERN", "MAX_TILES", "MODEL", "OUTPUT_MODE", "OUTPUT",
                                "OUTPUT_FOLDER", "SCHEDULER"],
        "rsvlm:export_model": ["PYTHON", "WEIGHTS", "OUTPUT_FOLDER"],
        "rsvlm:import_model": ["CHECKPOINT", "ARCH", "QUICK_GELU", "NAME", "LICENSE", "PYTHON", "OUTPUT_FOLDER"],
        "rsvlm:build_index": ["INPUT", "EXTENT", "MAX_TILES", "MODEL", "OUTPUT", "GUIDE", "SCHEDULER"],
        "rsvlm:search_index": ["INDEX", "QUERY", "MAX_HITS", "MODEL", "OUTPUT"],
    }
    for alg_id, params in expected.items():
        alg = registry.algorithmById(alg_id)
        assert alg is not None, alg_id
        names = [p.name() for p in alg.parameterDefinitions()]
        assert names == params
        assert all(name == name.upper() for name in names)
        assert alg.shortHelpString() and alg.displayName() and alg.group()
        assert alg.flags() & alg.FlagSupportsBatch and alg.flags() & alg.FlagCanCancel
        assert not alg.flags() & alg.FlagNoThreading
        assert type(alg.createInstance()) is type(alg)
    outputs = {o.name() for o in registry.algorithmById("rsvlm:caption_raster").outputDefinitions()}
    assert outputs == {"OUTPUT", "GLOBAL_CAPTION", "N_TILES"}
    outputs = {o.name() for o in registry.algorithmById("rsvlm:search_raster").outputDefinitions()}
    assert outputs == {"OUTPUT", "N_HITS", "BEST_SCORE"}
    caption = registry.algorithmById("rsvlm:caption_raster")
    for optional in ("EXTENT", "MODEL", "GUIDE"):
        assert caption.parameterDefinition(optional).flags() & caption.parameterDefinition(optional).FlagOptional
    assert caption.parameterDefinition("MAX_TILES").defaultValue() == 48
    assert registry.algorithmById("rsvlm:search_raster").parameterDefinition("OUTLINES").defaultValue() is True
    # the optional parameters of text-guided DRIS, outlines and Dask are each explained in the help
    answers = ["OUTLINES", "ANSWERS", "MIN_SCORE", "MAX_BOXES"]
    documented = {"rsvlm:caption_raster": ["GUIDE"], "rsvlm:search_raster": answers,
                  "rsvlm:ask_raster": answers, "rsvlm:batch_caption": ["SCHEDULER"],
                  "rsvlm:build_index": ["GUIDE", "SCHEDULER"]}
    for alg_id, names in documented.items():
        alg = registry.algorithmById(alg_id)
        for name in names:
            assert f"{name} (" in alg.shortHelpString(), (alg_id, name)
    for alg_id in ("rsvlm:batch_caption", "rsvlm:build_index"):
        scheduler = registry.algorithmById(alg_id).parameterDefinition("SCHEDULER")
        assert scheduler.flags() & scheduler.FlagOptional and not scheduler.defaultValue()  # empty: runs here


@pytest.mark.parametrize(("alg_id", "text"), [("rsvlm:search_raster", {"QUERY": "storage tanks"}),
                                               ("rsvlm:ask_raster", {"QUESTION": "where are the ships?"})])
def test_answer_parameters_reach_the_job_config(plugin, rasters, tmp_path, alg_id, text):
    """ANSWERS, MIN_SCORE and MAX_BOXES of search and ask: their defaults are the core's, and what
    the user sets is the JobConfig of the job (prepared on the main thread as Processing does)."""
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback

    from rs_vlm_plugin.core.locate.boxes import ANSWERS, BoxConfig

    alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
    answers = alg.parameterDefinition("ANSWERS")
    assert answers.options() == list(ANSWERS) and answers.defaultValue() == "auto" and answers.usesStaticStrings()
    for name, value, low, high in (("MIN_SCORE", BoxConfig().min_score, 0.0, 1.0),
                                   ("MAX_BOXES", BoxConfig().max_boxes, 1, None)):
        param = alg.parameterDefinition(name)
        assert param.defaultValue() == value and param.minimum() == low
        assert high is None or param.maximum() == high
    base = {"INPUT": str(rasters["scene"]), **text, "OUTPUT": str(tmp_path / "out.gpkg")}
    for given, answers, boxes in (({}, "auto", BoxConfig()),
                                  ({"ANSWERS": "boxes", "MIN_SCORE": 0.25, "MAX_BOXES": 7}, "boxes",
                                   BoxConfig(min_score=0.25, max_boxes=7)),
                                  ({"ANSWERS": "outlines", "MIN_SCORE": 1.0, "MAX_BOXES": 1}, "outlines",
                                   BoxConfig(min_score=1.0, max_boxes=1))):
        parameters, context = {**base, **given}, QgsProcessingContext()
        assert alg.checkParameterValues(parameters, context)[0]
        assert alg.prepareAlgorithm(parameters, context, QgsProcessingFeedback()) and alg.prepare_error is None
        config = alg.job_request(parameters, context).config
        assert (config.answers, config.boxes, config.outlines) == (answers, boxes, True)


@pytest.mark.parametrize(("given", "name"), [({"MIN_SCORE": 1.5}, "MIN_SCORE"), ({"MIN_SCORE": -0.1}, "MIN_SCORE"),
                                             ({"MAX_BOXES": 0}, "MAX_BOXES"), ({"ANSWERS": "polygons"}, "ANSWERS")])
def test_wrong_answer_parameters_are_refused_before_the_run(processing, rasters, tmp_path, given, name):
    from qgis.core import QgsProcessingException

    out = tmp_path / "never.gpkg"
    with pytest.raises(QgsProcessingException, match=f"Incorrect parameter value for {name}"):
        processing.run("rsvlm:search_raster", {"INPUT": str(rasters["scene"]), "QUERY": "storage tanks",
                                               "OUTPUT": str(out), **given})
    assert not out.exists()


# Errors that need no model ------------------------------------------------------------------


def test_empty_query_is_a_sentence(processing, rasters, tmp_path):
    """Problems found while preparing (main thread) reach processing.run as the sentence."""
    from qgis.core import QgsProcessingException

    out = tmp_path / "hits.gpkg"
    with pytest.raises(QgsProcessingException, match="search text is empty"):
        processing.run("rsvlm:search_raster", {"INPUT": str(rasters["scene"]), "QUERY": "   ", "OUTPUT": str(out)})
    assert not out.exists()


def test_extent_that_misses_the_raster_is_a_sentence(processing, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    out = tmp_path / "captions.gpkg"
    params = {"INPUT": str(rasters["scene"]), "EXTENT": "600000,600100,4200000,4200100 [EPSG:26914]",
              "OUTPUT": str(out)}
    with pytest.raises(QgsProcessingException, match="does not overlap the raster"):
        processing.run("rsvlm:caption_raster", params)
    assert not out.exists()


def test_missing_model_is_a_sentence(processing, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    empty = tmp_path / "empty_model"
    empty.mkdir()
    out = tmp_path / "captions.gpkg"
    with pytest.raises(QgsProcessingException, match="manifest.json is missing"):
        processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "MODEL": str(empty), "OUTPUT": str(out)})
    assert not out.exists()


def test_output_must_be_a_geopackage(processing, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="not a GeoPackage"):
        processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "OUTPUT": str(tmp_path / "x.shp")})


def test_export_without_torch_says_so(processing, tmp_path):
    from qgis.core import QgsProcessingException

    python = "/usr/bin/python3"
    probe = __import__("subprocess").run([python, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{python} has torch; this test needs an interpreter without it")
    feedback = RecordingFeedback.make()
    with pytest.raises(QgsProcessingException, match="has no torch"):
        processing.run("rsvlm:export_model", {"PYTHON": python, "OUTPUT_FOLDER": str(tmp_path / "bundle")},
                       feedback=feedback)
    assert not (tmp_path / "bundle" / "manifest.json").exists()


def test_export_with_a_missing_interpreter_is_a_sentence(processing, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="does not exist"):
        processing.run("rsvlm:export_model", {"PYTHON": str(tmp_path / "nope" / "python"),
                                              "OUTPUT_FOLDER": str(tmp_path / "bundle")})


def test_streaming_maps_progress_lines_and_kills_on_cancel(plugin, tmp_path):
    """The exporter's protocol with a stand-in child: PROGRESS lines, other lines, cancel."""
    import time

    from rs_vlm_plugin.qgis_shell.processing.model_algorithms import run_streaming

    script = "import time\nprint('PROGRESS 10', flush=True)\nprint('hello', flush=True)\nprint('PROGRESS 55')\n"
    feedback = RecordingFeedback.make()
    code, lines = run_streaming([sys.executable, "-c", script], feedback, cwd=tmp_path)
    assert code == 0 and lines == ["PROGRESS 10", "hello", "PROGRESS 55"]
    assert feedback.progress == [10.0, 55.0]

    slow = "import time\nprint('PROGRESS 1', flush=True)\ntime.sleep(60)\nprint('PROGRESS 99', flush=True)\n"
    cancelling = RecordingFeedback.make(cancel_on_first_progress=True)
    start = time.monotonic()
    code, lines = run_streaming([sys.executable, "-c", slow], cancelling, cwd=tmp_path)
    assert code is None and lines == ["PROGRESS 1"]
    assert time.monotonic() - start < 20


# With the model -----------------------------------------------------------------------------


def check_caption_rows(rows, level, source):
    assert rows, f"no {level} captions"
    for row in rows:
        assert row["level"] == level
        assert isinstance(row["caption"], str) and row["caption"].strip()
        assert 0.0 <= row["score"] <= 1.0
        assert 0.0 <= row["complexity"] <= 1.0
        assert row["gsd_m"] > 0
        assert row["source"] == source
        assert row["concepts"]


def test_caption_raster(processing, rasters, tmp_path, bundle_dir):
    out = tmp_path / "captions.gpkg"
    feedback = RecordingFeedback.make()
    result = processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "MAX_TILES": MAX_TILES,
                                                     "OUTPUT": str(out)}, feedback=feedback)
    assert Path(result["OUTPUT"]) == out and out.exists()
    assert layer_names(out) == list(CAPTION_LAYERS.values())
    rows = {level: read_layer(out, name)[0] for level, name in CAPTION_LAYERS.items()}
    for level in CAPTION_LAYERS:
        check_caption_rows(rows[level], level, "scene")
    assert len(rows["global"]) == 1
    assert result["GLOBAL_CAPTION"] == rows["global"][0]["caption"]
    assert len(rows["region"]) == 4  # a square raster has one root cell and four quadrants
    assert 1 <= result["N_TILES"] <= MAX_TILES
    assert len(rows["object"]) == result["N_TILES"]
    _, layer = read_layer(out, "captions_global")
    assert layer.crs().authid() == "EPSG:26914"
    whole = rows["global"][0]["_bbox"]
    assert whole.xMinimum() == pytest.approx(500000.0) and whole.yMaximum() == pytest.approx(4100000.0)
    assert whole.width() == pytest.approx(256.0) and whole.height() == pytest.approx(256.0)
    assert feedback.progress and max(feedback.progress) == pytest.approx(100.0)


def test_caption_raster_extent_in_another_crs(processing, rasters, tmp_path, bundle_dir):
    """EXTENT given in EPSG:4326 is transformed to the raster's CRS (and clipped to it)."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle

    utm = QgsRectangle(500000.0, 4099900.0, 500100.0, 4100000.0)  # the top-left 200 x 200 pixels
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:26914"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    geo = to_wgs84.transformBoundingBox(utm)
    extent = f"{geo.xMinimum()},{geo.xMaximum()},{geo.yMinimum()},{geo.yMaximum()} [EPSG:4326]"
    out = tmp_path / "part.gpkg"
    processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "EXTENT": extent, "MAX_TILES": 4,
                                            "OUTPUT": str(out)})
    (whole,), _ = read_layer(out, "captions_global")
    box = whole["_bbox"]
    # the bounding box of the transformed box holds the UTM box, a little larger, clipped to the raster
    assert box.xMinimum() == pytest.approx(500000.0, abs=1e-6)
    assert box.yMaximum() == pytest.approx(4100000.0, abs=1e-6)
    assert 100.0 <= box.width() < 103.0 and 100.0 <= box.height() < 103.0


def test_search_raster(processing, rasters, tmp_path, bundle_dir):
    out = tmp_path / "hits.gpkg"
    result = processing.run("rsvlm:search_raster", {"INPUT": str(rasters["scene"]), "QUERY": "buildings with roofs",
                                                    "MAX_TILES": MAX_TILES, "TOP_K": 5, "OUTPUT": str(out)})
    # OUTLINES is on by default: the outlines of what was found beside the tile hits
    assert layer_names(out) == [SEARCH_LAYER, SEARCH_OUTLINE_LAYER]
    rows, _ = read_layer(out, SEARCH_LAYER)
    assert 1 <= len(rows) <= 5 and result["N_HITS"] == len(rows)
    rows.sort(key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert result["BEST_SCORE"] == pytest.approx(scores[0])
    for row in rows:
        assert row["query"] == "buildings with roofs"
        assert row["level"] in ("region", "object")
        assert row["caption"].strip() and row["source"] == "scene"
    outlines, outline_layer = read_layer(out, SEARCH_OUTLINE_LAYER)
    assert {"query", "rank", "score", "shape", "area_m2"} <= set(outline_layer.fields().names())
    raster = raster_layer(rasters["scene"]).extent().buffered(1e-6)
    for row in outlines:
        assert row["query"] == "buildings with roofs" and row["shape"] in ("box", "polygon") and 0 < row["score"] <= 1
        assert raster.contains(row["_bbox"])

    # without outlines: only the hits, the same ones (the plan does not depend on the outlines)
    plain = tmp_path / "plain.gpkg"
    processing.run("rsvlm:search_raster", {"INPUT": str(rasters["scene"]), "QUERY": "buildings with roofs",
                                           "MAX_TILES": MAX_TILES, "TOP_K": 5, "OUTLINES": False, "OUTPUT": str(plain)})
    assert layer_names(plain) == [SEARCH_LAYER]
    again, _ = read_layer(plain, SEARCH_LAYER)
    assert sorted((r["rank"], round(r["score"], 5)) for r in again) == [(r["rank"], round(r["score"], 5)) for r in rows]


def test_cancel_after_the_first_progress_writes_nothing(processing, rasters, tmp_path, bundle_dir):
    out = tmp_path / "cancelled.gpkg"
    feedback = RecordingFeedback.make(cancel_on_first_progress=True)
    result = processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "MAX_TILES": MAX_TILES,
                                                     "OUTPUT": str(out)}, feedback=feedback)
    assert feedback.isCanceled() and feedback.progress
    assert "OUTPUT" not in result
    assert not out.exists()
    assert not list(tmp_path.glob("*.gpkg")) and not list(tmp_path.glob(".*tmp*"))


def _cint16_raster(path: Path) -> Path:
    """A GeoTIFF QGIS opens but RS-VLM cannot read (complex integers)."""
    from osgeo import gdal, osr

    ds = gdal.GetDriverByName("GTiff").Create(str(path), 16, 16, 1, gdal.GDT_CInt16)
    ds.SetGeoTransform((500000.0, 0.5, 0.0, 4100000.0, 0.0, -0.5))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(26914)
    ds.SetProjection(srs.ExportToWkt())
    ds = None
    return path


def _warped(source: Path, path: Path, crs: str) -> Path:
    from osgeo import gdal

    gdal.Warp(str(path), str(source), dstSRS=crs)
    return path


def test_batch_caption_goes_on_after_a_failure(processing, rasters, tmp_path, bundle_dir):
    bad = _cint16_raster(tmp_path / "complex.tif")
    other_crs = _warped(rasters["gradient"], tmp_path / "gradient_wgs84utm.tif", "EPSG:32614")
    out = tmp_path / "batch.gpkg"
    feedback = RecordingFeedback.make()
    result = processing.run("rsvlm:batch_caption", {
        "LAYERS": [str(rasters["scene"]), str(bad), str(other_crs), str(rasters["uint16_nodata"])],
        "MAX_TILES": 4, "OUTPUT": str(out)}, feedback=feedback)
    assert result["N_CAPTIONED"] == 3 and result["N_FAILED"] == 1
    assert len(feedback.errors) == 1 and feedback.errors[0].startswith("complex:")
    assert layer_names(out) == ["captions"]
    rows, layer = read_layer(out, "captions")
    assert layer.crs().authid() == "EPSG:26914"  # the first raster's CRS
    assert {r["source"] for r in rows} == {"scene", "gradient_wgs84utm", "uint16_nodata"}
    for source in ("scene", "gradient_wgs84utm", "uint16_nodata"):
        levels = [r["level"] for r in rows if r["source"] == source]
        assert levels.count("global") == 1 and "region" in levels and "object" in levels
        assert all(r["caption"].strip() for r in rows if r["source"] == source)
    # the reprojected raster (NAD83 vs WGS84 UTM 14N: nearly the same grid) lands where it was
    (glob,) = [r for r in rows if r["source"] == "gradient_wgs84utm" and r["level"] == "global"]
    assert glob["_bbox"].xMinimum() == pytest.approx(500000.0, abs=5.0)
    assert glob["_bbox"].yMaximum() == pytest.approx(4100000.0, abs=5.0)
    progress = feedback.progress
    assert progress == sorted(progress) and max(progress) == pytest.approx(100.0)


def test_batch_caption_cancel_writes_nothing(processing, rasters, tmp_path, bundle_dir):
    out = tmp_path / "batch.gpkg"
    feedback = RecordingFeedback.make(cancel_on_first_progress=True)
    result = processing.run("rsvlm:batch_caption", {"LAYERS": [str(rasters["scene"]), str(rasters["gradient"])],
                                                    "MAX_TILES": 4, "OUTPUT": str(out)}, feedback=feedback)
    assert "OUTPUT" not in result and not out.exists()


def test_caption_float_and_no_crs_rasters(processing, rasters, tmp_path, bundle_dir):
    feedback = RecordingFeedback.make()
    out = tmp_path / "float.gpkg"
    processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["float32_geographic"]), "MAX_TILES": 4,
                                            "OUTPUT": str(out)}, feedback=feedback)
    rows, layer = read_layer(out, "captions_global")
    assert layer.crs().authid() == "EPSG:4326"
    assert any("stretched" in w for w in feedback.warnings)
    out = tmp_path / "png.gpkg"
    feedback = RecordingFeedback.make()
    processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["no_crs"]), "MAX_TILES": 4, "OUTPUT": str(out)},
                   feedback=feedback)
    assert any("no CRS" in w for w in feedback.warnings)
    assert read_layer(out, "captions_global")[0][0]["caption"].strip()


@pytest.mark.skipif(not DEMO_SCENE.exists(), reason=f"the demo image {DEMO_SCENE} is not downloaded")
def test_caption_and_search_the_demo_scene(processing, tmp_path, bundle_dir):
    out = tmp_path / "demo.gpkg"
    result = processing.run("rsvlm:caption_raster", {"INPUT": str(DEMO_SCENE), "MAX_TILES": 16, "OUTPUT": str(out)})
    assert result["GLOBAL_CAPTION"].strip()
    for level, name in CAPTION_LAYERS.items():
        check_caption_rows(read_layer(out, name)[0], level, DEMO_SCENE.stem)
    hits = tmp_path / "demo_hits.gpkg"
    result = processing.run("rsvlm:search_raster", {"INPUT": str(DEMO_SCENE), "QUERY": "buildings", "MAX_TILES": 16,
                                                    "TOP_K": 5, "OUTPUT": str(hits)})
    rows = sorted(read_layer(hits, SEARCH_LAYER)[0], key=lambda r: r["rank"])
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and result["N_HITS"] == len(rows)
    assert not any(math.isnan(s) for s in scores)


def _torch_python() -> str | None:
    from rs_vlm_plugin.qgis_shell.child_python import default_python

    python = default_python()
    probe = __import__("subprocess").run([python, "-c", "import torch"], capture_output=True)
    return python if probe.returncode == 0 else None


def test_export_model_cancel_kills_the_exporter(processing, tmp_path):
    if _torch_python() is None:
        pytest.skip("no interpreter with torch for the exporter")
    import time

    feedback = RecordingFeedback.make(cancel_on_first_progress=True)
    start = time.monotonic()
    result = processing.run("rsvlm:export_model", {"OUTPUT_FOLDER": str(tmp_path / "bundle")}, feedback=feedback)
    assert result == {} or "OUTPUT_FOLDER" not in result
    assert feedback.isCanceled()
    assert not (tmp_path / "bundle" / "manifest.json").exists()
    assert time.monotonic() - start < 120


@pytest.mark.slow
def test_classify_raster_gives_one_class_per_fine_tile(processing, rasters, tmp_path, bundle_dir):
    out = tmp_path / "classes.gpkg"
    classes = ["forest", "water", "buildings", "bare soil"]
    result = processing.run("rsvlm:classify_raster", {"INPUT": str(rasters["scene"]), "CLASSES": ", ".join(classes),
                                                      "MAX_TILES": MAX_TILES, "OUTPUT": str(out)})
    assert layer_names(out) == ["classes"]
    rows, _ = read_layer(out, "classes")
    assert len(rows) == result["N_TILES"] >= 1
    assert result["SCENE"] in classes
    for row in rows:
        assert row["class"] in classes and row["runner_up"] in classes and row["class"] != row["runner_up"]
        assert 1 / len(classes) <= row["confidence"] <= 1.0


def test_classify_raster_needs_two_classes(processing, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="at least two classes"):
        processing.run("rsvlm:classify_raster", {"INPUT": str(rasters["scene"]), "CLASSES": "forest",
                                                 "OUTPUT": str(tmp_path / "c.gpkg")})


def test_ask_raster_answers_with_evidence(processing, rasters, tmp_path, bundle_dir):
    out = tmp_path / "evidence.gpkg"
    result = processing.run("rsvlm:ask_raster", {"INPUT": str(rasters["scene"]), "QUESTION": "Where is the water?",
                                                 "MAX_TILES": MAX_TILES, "OUTPUT": str(out)})
    assert result["KIND"] == "where" and "water" in result["ANSWER"]
    rows, _ = read_layer(out, "evidence")
    assert rows and all(r["question"] == "Where is the water?" and r["answer"] == result["ANSWER"] for r in rows)
    assert [r["rank"] for r in sorted(rows, key=lambda r: r["rank"])] == list(range(1, len(rows) + 1))


def test_ask_raster_rejects_what_it_cannot_answer(processing, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="I do not understand"):
        processing.run("rsvlm:ask_raster", {"INPUT": str(rasters["scene"]), "QUESTION": "tell me a story",
                                            "OUTPUT": str(tmp_path / "e.gpkg")})


def test_export_model_writes_a_bundle_the_algorithms_read(processing, rasters, tmp_path, bundle_dir):
    """The full export (about 20 s on a CPU), then a caption run with MODEL pointing at it.

    Needs what `build.py setup` needs for its own export (hence ``bundle_dir``): torch in the
    project's .venv and the knowledge base in resources/.
    """
    if _torch_python() is None:
        pytest.skip("no interpreter with torch for the exporter")
    knowledge_base = Path(__file__).resolve().parents[2] / "rs_vlm_plugin" / "resources" / "knowledge_base.json"
    if not knowledge_base.exists():
        pytest.skip(f"the exporter's knowledge base {knowledge_base} is missing")
    feedback = RecordingFeedback.make()
    result = processing.run("rsvlm:export_model", {"OUTPUT_FOLDER": str(tmp_path / "bundle")}, feedback=feedback)
    bundle = Path(result["OUTPUT_FOLDER"])
    assert (bundle / "manifest.json").exists()
    assert feedback.progress and max(feedback.progress) == pytest.approx(100.0)
    out = tmp_path / "captions.gpkg"
    processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "MAX_TILES": 4, "MODEL": str(bundle),
                                            "OUTPUT": str(out)})
    assert read_layer(out, "captions_global")[0][0]["caption"].strip()


def test_results_load_styled_when_processing_loads_them(processing, rasters, tmp_path, bundle_dir, project):
    """runAndLoadResults (what the Processing dialog does) loads the three styled caption layers."""
    from qgis.core import QgsRuleBasedRenderer

    out = tmp_path / "loaded.gpkg"
    processing.runAndLoadResults("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "MAX_TILES": 4,
                                                          "OUTPUT": str(out)})
    loaded = {layer.name(): layer for layer in project.mapLayers().values()}
    assert {"Global caption", "Region captions", "Object captions"} <= set(loaded)
    layer = loaded["Region captions"]
    assert isinstance(layer.renderer(), QgsRuleBasedRenderer) and layer.labelsEnabled()
    (region,) = [r for r in layer.renderer().rootRule().children() if "'region'" in r.filterExpression()]
    assert np.isclose(region.symbol().symbolLayer(0).strokeWidth(), 0.6)
    assert "caption" in layer.mapTipTemplate()


def test_processing_log_gets_a_pace_line_per_ten_percent(processing, rasters, tmp_path, bundle_dir):
    """Processing's log: plain lines with elapsed time, rate and time left, as the command line writes."""
    import re

    feedback = RecordingFeedback.make()
    processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "MAX_TILES": 8,
                                            "OUTPUT": str(tmp_path / "paced.gpkg")}, feedback=feedback)
    lines = [m for m in feedback.infos if re.search(r"\d+ % after \d+ (s|min)", m)]
    assert 2 <= len(lines) <= 11, feedback.infos
    assert lines[-1].split(": ")[-1].startswith("100 % after")


def test_export_without_trained_weights_refuses_in_one_sentence(tmp_path):
    """The exporter never hands over an untrained model unasked."""
    python = _torch_python()
    if python is None:
        pytest.skip("no interpreter with torch for the exporter")
    import subprocess

    done = subprocess.run([python, "-m", "rs_vlm_plugin.modeling.export", "--out", str(tmp_path / "bundle"),
                           "--weights", str(tmp_path / "none.npz")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1
    assert done.stderr.startswith("Error: there are no trained weights at ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "bundle").exists()


def test_a_plugin_without_weights_exports_the_installed_trained_model(processing, tmp_path, bundle_dir):
    """What the plugin from the repository zip (no weights) does: the trained bundle, copied whole."""
    from rs_vlm_plugin.qgis_shell.processing import model_algorithms

    feedback = RecordingFeedback.make()
    out = model_algorithms.export_installed_model(tmp_path / "exported", feedback)
    manifest = json.loads((Path(out["OUTPUT_FOLDER"]) / "manifest.json").read_text())
    assert manifest["trained"] is True and manifest["decoder"]
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == \
        sorted(p.name for p in bundle_dir.iterdir())
    assert any("was copied to" in m for m in feedback.infos)


def test_an_unfamiliar_query_is_a_warning_in_the_log_and_a_field(processing, rasters, tmp_path):
    """A text far from the trained classes: Processing's log warns, each hit carries familiar < 0.7."""
    odd = "a violin concerto in a minor key"
    out = tmp_path / "odd.gpkg"
    feedback = RecordingFeedback.make()
    processing.run("rsvlm:search_raster", {"INPUT": str(rasters["scene"]), "QUERY": odd, "MAX_TILES": 4, "TOP_K": 3,
                                           "OUTLINES": False, "OUTPUT": str(out)}, feedback=feedback)
    assert any(w.startswith(f"RS-VLM has seen little like '{odd}'") for w in feedback.warnings), feedback.warnings
    rows, _ = read_layer(out, SEARCH_LAYER)
    assert rows and all(r["familiar"] < 0.7 for r in rows)
