"""`build.py package` and `build.py install-plugin` produce an installable plugin."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_package_and_install_into_a_profile(tmp_path, bundle_dir):
    profile = tmp_path / "profile"
    registry = ROOT / "rs_vlm_plugin" / "resources" / "models.json"
    released = registry.read_bytes()
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "install-plugin", "--profile-dir", str(profile)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert registry.read_bytes() == released  # a local install leaves the released package's checksum alone
    version = next(l.split("=", 1)[1] for l in (ROOT / "rs_vlm_plugin" / "metadata.txt").read_text().splitlines()
                   if l.startswith("version="))
    repository = ROOT / "dist" / f"rs_vlm_plugin-{version}.zip"
    repository_names = zipfile.ZipFile(repository).namelist()
    assert not [n for n in repository_names if "/models/rs-vlm" in n or "resources/weights" in n]
    assert "rs_vlm_plugin/LICENSE" in repository_names
    archive = ROOT / "dist" / f"rs_vlm_plugin-{version}-offline.zip"  # what install-plugin unpacks
    names = zipfile.ZipFile(archive).namelist()
    assert "rs_vlm_plugin/metadata.txt" in names
    assert "rs_vlm_plugin/models/rs-vlm-lite0/manifest.json" in names
    assert "rs_vlm_plugin/models/rs-vlm-lite0/image_encoder.onnx" in names
    assert "rs_vlm_plugin/resources/knowledge_base.json" in names
    assert "rs_vlm_plugin/modeling/export.py" in names  # the plugin's "Export model to ONNX" runs it
    assert "rs_vlm_plugin/resources/open_clip/bpe_simple_vocab_16e6.txt.gz" in names  # for "Import model"
    assert "rs_vlm_plugin/modeling/import_clip.py" in names
    assert all(n.startswith("rs_vlm_plugin/") for n in names)
    assert not [n for n in names if "/tests/" in n or "rs_vlm_train" in n or "__pycache__" in n]
    installed = profile / "python" / "plugins" / "rs_vlm_plugin"
    assert (installed / "metadata.txt").exists() and (installed / "models" / "rs-vlm-lite0" / "manifest.json").exists()
    ini = configparser.ConfigParser()
    ini.optionxform = str
    ini.read(profile / "QGIS" / "QGIS3.ini")
    assert ini["PythonPlugins"]["rs_vlm_plugin"] == "true"
