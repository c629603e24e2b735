"""The Processing algorithms Batch caption layers and Build embedding index with a Dask scheduler
address (a real local cluster of 2 worker processes started by the algorithm): file layers go to
the cluster and give what the command line's batch and index give; a layer that is not a local
file stays in this process, with a sentence saying why."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from test_algorithms import RecordingFeedback, read_layer

pytest.importorskip("dask.distributed")


@pytest.fixture()
def processing(plugin):
    import processing

    return processing


def test_batch_on_a_cluster_equals_the_command_line_batch(processing, rasters, tmp_path):
    from rs_vlm_plugin.core.cli import main

    folder = tmp_path / "files"
    folder.mkdir()
    for key in ("scene", "gradient"):
        shutil.copy(rasters[key], folder / f"{key}.tif")
    out = tmp_path / "cluster.gpkg"
    feedback = RecordingFeedback.make()
    result = processing.run("rsvlm:batch_caption", {"FOLDER": str(folder), "MAX_TILES": 4, "OUTPUT": str(out),
                                                    "SCHEDULER": "local:2"}, feedback=feedback)
    assert result["N_CAPTIONED"] == 2 and result["N_FAILED"] == 0
    assert "Captioning 2 raster files on the Dask cluster local:2." in feedback.infos
    cli_out = tmp_path / "cli.gpkg"
    assert main(["batch", str(folder), "-o", str(cli_out), "--max-tiles", "4", "-q"]) == 0
    rows, _ = read_layer(out, "captions")
    want, _ = read_layer(cli_out, "captions")
    assert rows == want and {r["source"] for r in rows} == {"scene", "gradient"}


def test_build_index_on_a_cluster_and_a_memory_layer_stays_local(processing, rasters, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer

    from rs_vlm_plugin.core.jobs.index import EmbeddingIndex

    feedback = RecordingFeedback.make()
    out = tmp_path / "scene.gpkg"
    result = processing.run("rsvlm:build_index", {"INPUT": str(rasters["scene"]), "MAX_TILES": 8, "OUTPUT": str(out),
                                                  "SCHEDULER": "local:2"}, feedback=feedback)
    assert "Building the index on the Dask cluster local:2." in feedback.infos
    local = tmp_path / "local.gpkg"
    processing.run("rsvlm:build_index", {"INPUT": str(rasters["scene"]), "MAX_TILES": 8, "OUTPUT": str(local)})
    a, b = EmbeddingIndex.open(out), EmbeddingIndex.open(local)
    assert result["N_TILES"] == len(b) and len(a) == len(b)
    assert np.array_equal(a.keys, b.keys) and np.allclose(a.tokens, b.tokens, atol=2e-3)
    assert a.meta["source_id"] == b.meta["source_id"]
    # a layer in memory (a GDAL /vsimem/ copy) is no local file: it stays here
    data = open(rasters["gradient"], "rb").read()
    from osgeo import gdal

    gdal.FileFromMemBuffer("/vsimem/gradient.tif", data)
    layer = QgsRasterLayer("/vsimem/gradient.tif", "in memory", "gdal")
    QgsProject.instance().addMapLayer(layer)
    try:
        feedback = RecordingFeedback.make()
        result = processing.run("rsvlm:build_index", {"INPUT": layer.id(), "MAX_TILES": 4,
                                                      "OUTPUT": str(tmp_path / "mem.gpkg"), "SCHEDULER": "local:2"},
                                feedback=feedback)
        assert result["N_TILES"] > 0
        assert any(m.startswith("in memory stays in this process: Dask workers open raster files themselves")
                   for m in feedback.infos)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
        gdal.Unlink("/vsimem/gradient.tif")
