"""rsvlm:import_model through Processing in a real headless QGIS: a tiny open_clip checkpoint becomes
a bundle that the other algorithms use; a checkpoint that would run code is refused."""

from __future__ import annotations

import pickle

import pytest


@pytest.fixture()
def processing(plugin):
    import processing

    return processing


def test_import_then_classify_with_the_imported_model(processing, rasters, tmp_path):
    import torch

    from rs_vlm_plugin.core.bundle import ModelBundle
    from rs_vlm_plugin.modeling.clip.configs import get_config
    from rs_vlm_plugin.modeling.clip.model import CLIP

    torch.manual_seed(1)
    checkpoint = tmp_path / "GeoRSCLIP-tiny.pt"
    torch.save(CLIP(get_config("tiny-RN50")).state_dict(), checkpoint)
    bundle = tmp_path / "models" / "geo"
    result = processing.run("rsvlm:import_model", {"CHECKPOINT": str(checkpoint), "NAME": "geo",
                                                   "LICENSE": "CC-BY-4.0", "OUTPUT_FOLDER": str(bundle)})
    assert result["OUTPUT_FOLDER"] == str(bundle)
    model = ModelBundle.load(bundle)
    assert model.name == "geo" and not model.has_decoder
    assert model.manifest["sources"]["license"] == "CC-BY-4.0"
    classes = processing.run("rsvlm:classify_raster", {"INPUT": str(rasters["scene"]), "CLASSES": "forest, water",
                                                       "MAX_TILES": 4, "MODEL": str(bundle),
                                                       "OUTPUT": str(tmp_path / "classes.gpkg")})
    assert classes["SCENE"] in ("forest", "water")


def test_a_checkpoint_that_would_run_code_is_refused(processing, tmp_path):
    from qgis.core import QgsProcessingException

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    checkpoint = tmp_path / "evil.pt"
    checkpoint.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(QgsProcessingException, match="evil.pt"):
        processing.run("rsvlm:import_model", {"CHECKPOINT": str(checkpoint), "OUTPUT_FOLDER": str(tmp_path / "m")})
    assert not marker.exists() and not (tmp_path / "m").exists()
