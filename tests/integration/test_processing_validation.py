"""The Processing algorithms check their output and options with the core's validation: the
same sentences as the command line, raised as QgsProcessingException; nothing is written."""

from __future__ import annotations

import hashlib

import pytest


@pytest.fixture()
def processing(plugin):
    import processing

    return processing


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_output_that_is_the_input_raster_is_refused(processing, rasters, tmp_path):
    """A raster stored in a GeoPackage: writing the captions over it would destroy the input."""
    from osgeo import gdal
    from qgis.core import QgsProcessingException

    raster = tmp_path / "scene.gpkg"
    gdal.Translate(str(raster), str(rasters["scene"]), format="GPKG")
    before = _sha256(raster)
    with pytest.raises(QgsProcessingException, match="is the input file"):
        processing.run("rsvlm:caption_raster", {"INPUT": str(raster), "OUTPUT": str(raster)})
    assert _sha256(raster) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.gpkg"]


def test_an_output_that_is_the_index_is_refused(processing, tmp_path):
    from qgis.core import QgsProcessingException

    index = tmp_path / "scene.rsvlm-index.gpkg"
    index.write_bytes(b"stands for an index: the check comes before the file is read")
    before = _sha256(index)
    with pytest.raises(QgsProcessingException, match="is the input file"):
        processing.run("rsvlm:search_index", {"INDEX": str(index), "QUERY": "trees", "OUTPUT": str(index)})
    assert _sha256(index) == before


def test_a_class_list_of_commas_is_a_sentence(processing, rasters, tmp_path):
    from qgis.core import QgsProcessingException

    out = tmp_path / "classes.gpkg"
    with pytest.raises(QgsProcessingException, match="names no classes"):
        processing.run("rsvlm:classify_raster", {"INPUT": str(rasters["scene"]), "CLASSES": ",,,", "OUTPUT": str(out)})
    assert not out.exists()


def test_an_existing_output_is_replaced_as_processing_does(processing, rasters, bundle_dir, tmp_path):
    out = tmp_path / "captions.gpkg"
    out.write_bytes(b"an older result")
    result = processing.run("rsvlm:caption_raster", {"INPUT": str(rasters["scene"]), "MAX_TILES": 4,
                                                     "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out) and out.read_bytes()[:16] == b"SQLite format 3\x00"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.gpkg"]
