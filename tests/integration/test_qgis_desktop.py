"""The plugin inside the real QGIS desktop application (under a virtual X server).

QGIS is started with ``--code scripts/desktop_tour.py``, which loads the plugin the way the
Plugin Manager does, drives the RS-VLM panel like a user (mode, query, Run), saves screenshots
of the window and unloads the plugin (see ``build.run_desktop_tour``). Skipped where
``xvfb-run`` or the QGIS binary is missing.
"""

from __future__ import annotations

import shutil
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))
import build  # noqa: E402 - the repository's build tool holds the one tour runner

QGIS_BIN = shutil.which("qgis.bin") or shutil.which("qgis")
XVFB_RUN = shutil.which("xvfb-run")
pytestmark = pytest.mark.skipif(QGIS_BIN is None or XVFB_RUN is None,
                                reason="the QGIS desktop application or xvfb-run is not installed")


def tour(tmp_path, raster=None, steps=(), shots=None, max_tiles=8) -> dict:
    seen = build.run_desktop_tour(tmp_path, raster, list(steps), shots, max_tiles=max_tiles, timeout_s=600)
    assert "error" not in seen, seen["error"] + "\n" + seen.get("log", "")
    return seen


def test_plugin_loads_and_unloads_in_qgis(tmp_path):
    seen = tour(tmp_path)
    assert seen["load"] and seen["start"] and seen["provider"] and seen["dock"]
    assert seen["toolbar_actions"] == ["Describe visible extent", "RS-VLM panel"]
    assert seen["unload"] and not seen["provider_after_unload"] and not seen["toolbar_after_unload"]


def test_panel_describes_and_searches_in_qgis(tmp_path, bundle_dir, demo_scene):
    """Describe and Search from the panel on the real demo scene, with screenshots of the window."""
    from PIL import Image

    shots = tmp_path / "shots"
    seen = tour(tmp_path, demo_scene, ["describe", "search"], shots)
    describe, search = seen["steps"]["describe"], seen["steps"]["search"]
    assert describe["task_started"] and search["task_started"]
    assert describe["answer"] and describe["results"] > 0  # the global caption on top, captions listed
    assert {"Global caption", "Region captions", "Object captions"} <= set(describe["layers"])
    assert search["results"] > 0 and "places match" in search["status"]
    assert any(name.startswith("Search hits") for name in search["layers"])
    groups = search["groups"]
    assert len(groups) == 2 and all(g.startswith("scene: RS-VLM") for g in groups), groups
    runs = sorted((tmp_path / "rs_vlm_runs").glob("rs_vlm_*.gpkg"))
    assert len(runs) == 2, runs  # one GeoPackage per run, none overwritten
    for name in ("describe", "search"):
        image = Image.open(shots / f"{name}.jpg")
        assert image.size[0] >= 1000 and image.size[1] >= 700
        colours = image.convert("RGB").resize((64, 64)).getcolors(64 * 64)
        assert colours is not None and len(colours) > 50  # a drawn window, not a blank one
    assert seen["unload"] and not seen["provider_after_unload"]
