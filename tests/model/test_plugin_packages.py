"""The three artefacts of ``build.py package`` from the real bundle: the repository zip passes the
repository's rules, the model package installs over HTTP from 127.0.0.1 and runs, the offline zip
holds both."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "rs_vlm_plugin"
sys.path.insert(0, str(ROOT / "tests"))
from http_server import FileServer  # noqa: E402


def _packaging():
    spec = importlib.util.spec_from_file_location("package_plugin", ROOT / "scripts" / "package_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plugin_copy(tmp_path: Path) -> Path:
    """The plugin folder without its models and weights (packaging updates its registry)."""
    def ignore(folder, names):
        rel = Path(folder).relative_to(PLUGIN)
        return [n for n in names if n == "__pycache__" or (rel == Path(".") and n == "models")
                or (rel == Path("resources") and n == "weights")]

    return Path(shutil.copytree(PLUGIN, tmp_path / "rs_vlm_plugin", ignore=ignore))


def validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "validate_plugin_zip.py"), *args],
                          capture_output=True, text=True)


def test_package_install_and_run(tmp_path, bundle_dir):
    plugin = plugin_copy(tmp_path)
    made = _packaging().release_all(plugin, bundle_dir, tmp_path / "dist")  # the registry gets this package
    repository, model, offline = made["repository"], made["model"], made["offline"]

    done = validate(str(repository), "--forbid", "models/", "resources/weights/")
    assert done.returncode == 0, done.stdout
    assert repository.stat().st_size <= 25_000_000
    names = zipfile.ZipFile(repository).namelist()
    assert not [n for n in names if "/models/rs-vlm" in n or "resources/weights" in n or n.endswith(".onnx")]
    registry = json.loads(zipfile.ZipFile(repository).read("rs_vlm_plugin/resources/models.json"))
    entry = registry["models"][0]
    assert entry["size"] == model.stat().st_size and model.name == entry["file"]

    done = validate("--offline", str(offline))
    assert done.returncode == 0, done.stdout
    offline_names = zipfile.ZipFile(offline).namelist()
    assert "rs_vlm_plugin/models/rs-vlm-lite0/image_encoder.onnx" in offline_names
    assert "rs_vlm_plugin/models/rs-vlm-lite0/.inputs.sha256" not in offline_names

    with FileServer(model.parent) as server:
        root = tmp_path / "installed"
        code = subprocess.run([sys.executable, "-m", "rs_vlm_plugin", "models", "install", "rs-vlm-lite0", "-q",
                               "--registry", str(plugin / "resources" / "models.json"), "--models-dir", str(root),
                               "--mirror", server.base_url], cwd=ROOT, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    from rs_vlm_plugin.core.bundle import ModelBundle

    installed = ModelBundle.load(root / "rs-vlm-lite0")
    reference = ModelBundle.load(bundle_dir)
    texts = ["a paved road through a forest", "storage tanks"]
    assert np.abs(installed.encode_texts(texts) - reference.encode_texts(texts)).max() == 0.0
