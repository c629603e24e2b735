"""Query familiarity through the real default model: a text far from what it learnt gets a
warning and a low ``familiar`` field in the GeoPackage; a trained class name gets neither."""

from __future__ import annotations

from pathlib import Path

import pytest
from osgeo import ogr

from rs_vlm_plugin.core.gpkg import write_geopackage
from rs_vlm_plugin.core.jobs.ask import ask
from rs_vlm_plugin.core.jobs.classify import classify
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.results import result_layers
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.progress import RecordingProgress
from rs_vlm_plugin.core.raster import open_raster
from rs_vlm_plugin.core.seen_bias import FAMILIAR_THRESHOLD, SeenBias

ODD = "a violin concerto in a minor key"
CONFIG = JobConfig(plan=PlanConfig(max_tiles=8), knowledge=False, outlines=False)


@pytest.fixture(scope="module")
def trained(bundle):
    names = SeenBias.from_manifest(bundle.manifest).trained_classes
    if not names:
        pytest.skip("this bundle names no trained classes")
    return names


def _run(job, generated, bundle, text, tmp_path: Path, name: str):
    progress = RecordingProgress()
    with open_raster(generated["scene"]) as source:
        result = job(source, bundle, text, config=CONFIG, progress=progress)
    out = write_geopackage(tmp_path / f"{name}.gpkg", result_layers(result), result.crs_wkt)
    return progress.warnings, _familiar(out)


def _familiar(path: Path) -> dict[str, list[tuple[str, float]]]:
    """Per layer, (first text field, familiar) of every feature."""
    ds = ogr.Open(str(path))
    out = {}
    for k in range(ds.GetLayerCount()):
        layer = ds.GetLayerByIndex(k)
        key = {"search_hits": "query", "classes": "class", "evidence": "question"}.get(layer.GetName())
        out[layer.GetName()] = [(f.GetField(key) if key else "", f.GetField("familiar")) for f in layer]
    return out


def _unfamiliar_warnings(warnings: list[str]) -> list[str]:
    return [w for w in warnings if w.startswith("RS-VLM has seen little like")]


def test_search_for_an_odd_text_warns_and_marks_its_hits(bundle, generated, trained, tmp_path):
    warnings, layers = _run(search, generated, bundle, ODD, tmp_path, "odd")
    (message,) = _unfamiliar_warnings(warnings)
    assert f"'{ODD}'" in message and "nearest learnt concepts" in message
    assert layers["search_hits"] and all(f < FAMILIAR_THRESHOLD for _, f in layers["search_hits"])

    warnings, layers = _run(search, generated, bundle, trained[0], tmp_path, "trained")
    assert _unfamiliar_warnings(warnings) == []
    assert all(f == pytest.approx(1.0, abs=1e-4) for _, f in layers["search_hits"])


def test_classify_marks_each_row_with_its_class(bundle, generated, trained, tmp_path):
    warnings, layers = _run(classify, generated, bundle, [trained[0], ODD], tmp_path, "classes")
    (message,) = _unfamiliar_warnings(warnings)
    assert f"'{ODD}'" in message
    for label, familiar in layers["classes"]:
        if label == ODD:
            assert familiar < FAMILIAR_THRESHOLD
        else:
            assert familiar == pytest.approx(1.0, abs=1e-4)


def test_the_default_class_list_is_not_warned_about(bundle, generated, tmp_path):
    progress = RecordingProgress()
    with open_raster(generated["scene"]) as source:
        result = classify(source, bundle, None, config=CONFIG, progress=progress)
    assert _unfamiliar_warnings(progress.warnings) == []
    assert all(0.0 <= r.familiar <= 1.0 for r in result.records)


def test_ask_marks_its_evidence_with_the_subject(bundle, generated, trained, tmp_path):
    warnings, layers = _run(ask, generated, bundle, f"is there {ODD}?", tmp_path, "ask_odd")
    assert len(_unfamiliar_warnings(warnings)) == 1
    assert layers["evidence"] and all(f < FAMILIAR_THRESHOLD for _, f in layers["evidence"])
    warnings, layers = _run(ask, generated, bundle, f"is there {trained[0]}?", tmp_path, "ask_trained")
    assert _unfamiliar_warnings(warnings) == []
    assert all(f == pytest.approx(1.0, abs=1e-4) for _, f in layers["evidence"])
