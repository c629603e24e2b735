"""scripts/validate_plugin_zip.py holds the repository's rules, and the repository zip passes them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "rs_vlm_plugin"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validator = _load("validate_plugin_zip")
packaging = _load("package_plugin")


@pytest.fixture(scope="module")
def repository_zip(tmp_path_factory) -> Path:
    """The repository zip of this checkout (no model)."""
    return packaging.write_plugin_zip(PLUGIN, tmp_path_factory.mktemp("dist") / "rs_vlm_plugin-test.zip", {})


def test_the_repository_zip_passes(repository_zip):
    assert validator.zip_problems(repository_zip, forbid=("models/", "resources/weights/")) == []
    names = zipfile.ZipFile(repository_zip).namelist()
    assert "rs_vlm_plugin/LICENSE" in names and "rs_vlm_plugin/resources/models.json" in names
    assert not [n for n in names if n.endswith((".onnx", ".npz", ".npy")) or "__pycache__" in n]
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "validate_plugin_zip.py"), str(repository_zip)],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "OK" in done.stdout


def rewritten(source: Path, target: Path, drop=(), add=None, rename=None, edit=None) -> Path:
    """A copy of a zip with members dropped, added, the folder renamed or a member's text edited."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            if any(name.endswith(d) for d in drop):
                continue
            data = src.read(name)
            if edit and name.endswith(edit[0]):
                data = edit[1](data.decode()).encode()
            dst.writestr(name.replace("rs_vlm_plugin/", f"{rename}/", 1) if rename else name, data)
        for name, data in (add or {}).items():
            dst.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return target


@pytest.mark.parametrize("change, expected", [
    ({"drop": ["/LICENSE"]}, "no LICENSE file"),
    ({"add": {"rs_vlm_plugin/core/__pycache__/x.cpython-311.pyc": b"\0"}}, "__pycache__ must not be shipped"),
    ({"add": {"rs_vlm_plugin/models/m/image_encoder.onnx": b"\0"}}, "binary files are not accepted"),
    ({"add": {"rs_vlm_plugin/.DS_Store": b"\0"}}, "hidden files"),
    ({"add": {"README.md": b"x"}}, "exactly one folder"),
    ({"rename": "rs-vlm-plugin"}, "not a Python package name"),
    ({"edit": ("metadata.txt", lambda t: t.replace("tracker=", "bugs="))}, "lacks the field 'tracker'"),
    ({"edit": ("metadata.txt", lambda t: t.replace("qgisMaximumVersion=4.99\n", ""))}, "QGIS 4 will not offer"),
    ({"edit": ("metadata.txt", lambda t: t.replace("email=maintainers@rs-vlm.org", "email=nobody"))}, "not an address"),
    ({"edit": ("metadata.txt", lambda t: t.replace("email=maintainers@rs-vlm.org", "email=rs-vlm@example.org"))},
     "placeholder"),
    ({"edit": ("__init__.py", lambda t: t.replace("def classFactory", "def class_factory"))}, "no classFactory"),
    ({"drop": ["resources/icon.svg"]}, "names the icon"),
])
def test_each_rule_is_enforced(repository_zip, tmp_path, change, expected):
    broken = rewritten(repository_zip, tmp_path / "broken.zip", **change)
    problems = validator.zip_problems(broken)
    assert any(expected in p for p in problems), problems


def test_a_zip_over_25_mb_is_refused(repository_zip, tmp_path):
    big = rewritten(repository_zip, tmp_path / "big.zip", add={"rs_vlm_plugin/resources/noise.txt":
                                                                  os.urandom(25_000_000)})
    assert any("at most 25,000,000" in p for p in validator.zip_problems(big))
    assert not any("at most" in p for p in validator.zip_problems(big, offline=True))
    forbidden = rewritten(repository_zip, tmp_path / "weights.zip", add={"rs_vlm_plugin/resources/weights/w.txt": b"x"})
    assert any("must not be in this zip" in p for p in validator.zip_problems(forbidden, forbid=("resources/weights/",)))


def test_model_packages_are_deterministic(tmp_path):
    from rs_vlm_plugin.core.models.archive import parse_sums, sha256_of, write_model_package

    bundle = tmp_path / "m"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    (bundle / "a.onnx").write_bytes(b"abc")
    (bundle / ".inputs.sha256").write_text("stamp")
    first = sha256_of(write_model_package(bundle, tmp_path / "1.zip"))
    os.utime(bundle / "a.onnx", (0, 0))
    assert sha256_of(write_model_package(bundle, tmp_path / "2.zip")) == first
    with zipfile.ZipFile(tmp_path / "1.zip") as zf:
        assert zf.namelist() == ["m/a.onnx", "m/manifest.json", "m/SHA256SUMS"]
        assert parse_sums(zf.read("m/SHA256SUMS").decode())["a.onnx"] == sha256_of(bundle / "a.onnx")
