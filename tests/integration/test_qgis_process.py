"""The plugin's algorithms from the command line, through ``qgis_process``.

How ``qgis_process`` 3.22 finds the plugin: it loads Python plugins that have
``hasProcessingProvider=yes`` from the folders in ``QGIS_PLUGINPATH`` and are enabled in the
profile (``[PythonPlugins] rs_vlm_plugin=true``, written by ``qgis_process plugins enable``).
The test uses its own profile folder (``QGIS_CUSTOM_CONFIG_PATH``) so the user's is left alone,
and a plugin folder holding a link to ``rs_vlm_plugin`` only (the repository root also holds
other packages). ``qgis_process`` embeds the system Python, so the virtualenv's packages
(onnxruntime, tokenizers) are added with ``PYTHONPATH``.

Debian's ``/usr/bin/qgis_process`` is a shell wrapper that passes ``--noversioncheck``, which
the 3.22 ``qgis_process.bin`` rejects; the binary beside it is called directly when present.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

from rs_vlm_plugin.core.jobs.results import CAPTION_LAYERS


def _qgis_process() -> str | None:
    wrapper = shutil.which("qgis_process")
    if wrapper and Path(wrapper + ".bin").exists():
        return wrapper + ".bin"
    return wrapper or shutil.which("qgis_process.bin")


QGIS_PROCESS = _qgis_process()
pytestmark = pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run qgis_process with the plugin enabled in a throwaway profile; returns a runner."""
    root = tmp_path_factory.mktemp("qgis_process")
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "rs_vlm_plugin").symlink_to(REPO / "rs_vlm_plugin", target_is_directory=True)
    config = root / "config"
    config.mkdir()
    env = dict(os.environ)
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(plugins), QGIS_CUSTOM_CONFIG_PATH=str(config),
               PYTHONPATH=os.pathsep.join([sysconfig.get_paths()["purelib"]]
                                          + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([QGIS_PROCESS, *args], env=env, cwd=root, capture_output=True, text=True,
                              timeout=timeout)

    enabled = run("plugins", "enable", "rs_vlm_plugin", timeout=120)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    return run


def test_plugin_is_enabled_and_lists_its_algorithms(cli):
    plugins = cli("plugins", timeout=120)
    assert "* rs_vlm_plugin" in plugins.stdout
    listing = cli("list", timeout=120).stdout
    for name in ("caption_raster", "search_raster", "batch_caption", "export_model"):
        assert f"rsvlm:{name}" in listing


def test_help_shows_the_parameters(cli):
    text = cli("help", "rsvlm:search_raster", timeout=120).stdout
    for name in ("INPUT", "QUERY", "EXTENT", "MAX_TILES", "TOP_K", "ANSWERS", "MIN_SCORE", "MAX_BOXES", "MODEL", "OUTPUT",
                 "N_HITS", "BEST_SCORE"):
        assert f"{name}:" in text


def test_errors_are_sentences(cli, rasters, tmp_path):
    out = tmp_path / "never.gpkg"
    done = cli("run", "rsvlm:search_raster", "--", f"INPUT={rasters['scene']}", "QUERY= ", f"OUTPUT={out}",
               timeout=120)
    assert done.returncode != 0
    assert "The search text is empty" in done.stdout + done.stderr
    assert not out.exists()


def test_caption_raster_from_the_command_line(cli, rasters, tmp_path, bundle_dir):
    from rs_vlm_plugin.core.gpkg import read_layer_names

    out = tmp_path / "cli.gpkg"
    done = cli("--json", "run", "rsvlm:caption_raster", "--", f"INPUT={rasters['scene']}", "MAX_TILES=4",
               f"OUTPUT={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(done.stdout)["results"]
    assert Path(results["OUTPUT"]) == out and out.exists()
    assert results["GLOBAL_CAPTION"].strip()
    assert 1 <= results["N_TILES"] <= 4
    assert read_layer_names(out) == list(CAPTION_LAYERS.values())
