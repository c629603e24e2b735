"""Batch captioning of a folder of raster files: merged or one GeoPackage per input, a failure on
one file reported while the others go on (real rasters, the real model, ``processing.run``)."""

from __future__ import annotations

import shutil

import pytest
from test_algorithms import RecordingFeedback, layer_names, read_layer

from rs_vlm_plugin.core.jobs.results import CAPTION_LAYERS


@pytest.fixture()
def processing(plugin):
    import processing

    return processing


@pytest.fixture()
def folder(rasters, tmp_path):
    """Two real GeoTIFFs, a text file posing as a .TIF (matched, fails) and a note (not matched)."""
    folder = tmp_path / "flight"
    folder.mkdir()
    shutil.copy(rasters["scene"], folder / "scene.tif")
    shutil.copy(rasters["gradient"], folder / "gradient.tif")
    shutil.copy(rasters["not_a_raster"], folder / "corrupt.TIF")
    (folder / "notes.txt").write_text("flown 2026-11-23")
    return folder


def test_folder_rasters_match_patterns_without_case(folder):
    from rs_vlm_plugin.qgis_shell.processing.batch_algorithm import BATCH_PATTERN, folder_rasters

    assert [p.name for p in folder_rasters(folder)] == ["corrupt.TIF", "gradient.tif", "scene.tif"]
    assert [p.name for p in folder_rasters(folder, "*.txt")] == ["notes.txt"]
    assert [p.name for p in folder_rasters(folder, " s*.tif ; n*")] == ["notes.txt", "scene.tif"]
    assert ".vrt" in BATCH_PATTERN and ".jp2" in BATCH_PATTERN


def test_batch_folder_merged_goes_on_after_a_corrupt_file(processing, folder, rasters, tmp_path, bundle_dir):
    out = tmp_path / "flight.gpkg"
    feedback = RecordingFeedback.make()
    result = processing.run("rsvlm:batch_caption", {
        "LAYERS": [str(rasters["uint16_nodata"])], "FOLDER": str(folder), "MAX_TILES": 4, "OUTPUT": str(out)},
        feedback=feedback)
    assert result["N_CAPTIONED"] == 3 and result["N_FAILED"] == 1
    assert result["FILES"] == [str(out)] and result["OUTPUT"] == str(out)
    (error,) = feedback.errors
    assert error.startswith("corrupt: corrupt.TIF is not a raster QGIS can read;")
    # the layers first, then the folder's files by name; one progress text each
    for line in ("Captioning 1 of 4: uint16_nodata", "Captioning 2 of 4: corrupt",
                 "Captioning 3 of 4: gradient", "Captioning 4 of 4: scene"):
        assert line in feedback.infos
    assert layer_names(out) == ["captions"]
    rows, _ = read_layer(out, "captions")
    assert {r["source"] for r in rows} == {"uint16_nodata", "gradient", "scene"}
    assert all(r["caption"].strip() for r in rows)


def test_batch_one_geopackage_per_input_never_overwrites(processing, folder, tmp_path, bundle_dir):
    target = tmp_path / "per_input"
    target.mkdir()
    (target / "scene.gpkg").write_bytes(b"an earlier run")
    (folder / "corrupt.TIF").unlink()
    feedback = RecordingFeedback.make()
    result = processing.run("rsvlm:batch_caption", {
        "FOLDER": str(folder), "PATTERN": "*.tif", "MAX_TILES": 4, "OUTPUT_MODE": 1, "OUTPUT_FOLDER": str(target)},
        feedback=feedback)
    assert result["N_CAPTIONED"] == 2 and result["N_FAILED"] == 0 and not feedback.errors
    assert result["FILES"] == [str(target / "gradient.gpkg"), str(target / "scene_2.gpkg")]
    assert (target / "scene.gpkg").read_bytes() == b"an earlier run"
    assert "OUTPUT" not in result or not result["OUTPUT"]
    for path, source in ((target / "gradient.gpkg", "gradient"), (target / "scene_2.gpkg", "scene")):
        assert layer_names(path) == list(CAPTION_LAYERS.values())
        rows, layer = read_layer(path, CAPTION_LAYERS["global"])
        assert layer.crs().authid() == "EPSG:26914"
        assert len(rows) == 1 and rows[0]["source"] == source and rows[0]["caption"].strip()
    assert sorted(p.name for p in target.iterdir()) == ["gradient.gpkg", "scene.gpkg", "scene_2.gpkg"]


@pytest.mark.parametrize("parameters, message", [
    ({}, "No rasters were given; choose raster layers"),
    ({"FOLDER": "{tmp}/missing"}, "does not exist; choose a folder of raster files"),
    ({"FOLDER": "{folder}", "PATTERN": "*.png"}, "No file in .* matches \\*.png; choose another folder"),
    ({"FOLDER": "{folder}", "OUTPUT_MODE": 1}, "Choose a folder for the GeoPackages \\(OUTPUT_FOLDER\\)"),
])
def test_batch_input_problems_are_sentences(processing, folder, tmp_path, parameters, message):
    from qgis.core import QgsProcessingException

    values = {k: v.format(tmp=tmp_path, folder=folder) if isinstance(v, str) else v for k, v in parameters.items()}
    with pytest.raises(QgsProcessingException, match=message):
        processing.run("rsvlm:batch_caption", {"MAX_TILES": 4, "OUTPUT": str(tmp_path / "x.gpkg"), **values})
    assert not (tmp_path / "x.gpkg").exists()
