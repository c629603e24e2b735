"""Reproducible packages and the release step (scripts/package_plugin.py): two builds of one
bundle give one SHA-256; a package build never writes the registry; the release step records the
package with a release URL derived from its version and file name.

Only the URL's form is checked: there is no network here, so nobody checks that the release
exists until the asset is uploaded under that URL.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from rs_vlm_plugin.core.models.archive import sha256_of
from rs_vlm_plugin.core.models.registry import RELEASES_URL, load_registry

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "rs_vlm_plugin"
TRACKED_REGISTRY = PLUGIN / "resources" / "models.json"


def _packaging():
    spec = importlib.util.spec_from_file_location("package_plugin", ROOT / "scripts" / "package_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_bundle(folder: Path) -> Path:
    """A bundle-shaped folder with the registry's model name: a manifest and a few real files."""
    bundle = folder / "rs-vlm-lite0"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps({"format": "rs-vlm-bundle", "format_version": 2,
                                                      "name": "rs-vlm-lite0"}, indent=2))
    np.save(bundle / "kb_embeddings.npy", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    shutil.copyfile(PLUGIN / "resources" / "knowledge_base.json", bundle / "knowledge_base.json")
    (bundle / ".inputs.sha256").write_text("a build stamp, never packaged")
    return bundle


def plugin_copy(folder: Path) -> Path:
    def ignore(where, names):
        rel = Path(where).relative_to(PLUGIN)
        return [n for n in names if n == "__pycache__" or (rel == Path(".") and n == "models")
                or (rel == Path("resources") and n == "weights")]

    return Path(shutil.copytree(PLUGIN, folder / "rs_vlm_plugin", ignore=ignore))


def test_two_builds_give_one_sha256_and_leave_the_registry_alone(tmp_path):
    plugin = plugin_copy(tmp_path / "checkout")
    registry = (plugin / "resources" / "models.json").read_bytes()
    bundle = small_bundle(tmp_path / "bundle")
    first = _packaging().package_all(plugin, bundle, tmp_path / "dist1")
    # a second build later, from files written again (new modification times, other creation order)
    again = small_bundle(tmp_path / "bundle2")
    for path in sorted(again.iterdir(), reverse=True):
        path.write_bytes(path.read_bytes())
    second = _packaging().package_all(plugin, again, tmp_path / "dist2")
    for kind in ("model", "repository", "offline"):
        assert sha256_of(first[kind]) == sha256_of(second[kind]), kind
    assert (plugin / "resources" / "models.json").read_bytes() == registry  # package never records
    assert first["registry_matches"] is False  # not the published package: said, not hidden
    with zipfile.ZipFile(first["model"]) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos if not i.filename.endswith("SHA256SUMS")) \
        + ["rs-vlm-lite0/SHA256SUMS"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert "rs-vlm-lite0/.inputs.sha256" not in {i.filename for i in infos}


def test_the_release_step_records_the_built_asset_with_its_release_url(tmp_path):
    plugin = plugin_copy(tmp_path / "checkout")
    made = _packaging().release_all(plugin, small_bundle(tmp_path / "bundle"), tmp_path / "dist")
    entry = load_registry(plugin / "resources" / "models.json").get("rs-vlm-lite0")
    model = made["model"]
    assert (entry.size, entry.sha256) == (model.stat().st_size, sha256_of(model))
    assert entry.file == model.name == f"{entry.name}-{entry.version}.zip"
    assert entry.url == made["url"] == f"{RELEASES_URL}/{entry.name}-{entry.version}/{model.name}"
    assert load_registry(plugin / "resources" / "models.json").url_of(entry) == entry.url
    assert load_registry(plugin / "resources" / "models.json").url_of(entry, "http://127.0.0.1:9/m") == \
        f"http://127.0.0.1:9/m/{model.name}"  # a mirror keeps the file name, not the tag
    carried = json.loads(zipfile.ZipFile(made["repository"]).read("rs_vlm_plugin/resources/models.json"))
    assert carried == json.loads((plugin / "resources" / "models.json").read_text())


def test_the_tracked_registry_is_a_release_of_this_plugin():
    entry = load_registry(TRACKED_REGISTRY).get("rs-vlm-lite0")
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.size > 0
    assert entry.file == f"{entry.name}-{entry.version}.zip"
    assert entry.url == f"{RELEASES_URL}/{entry.name}-{entry.version}/{entry.file}"
    meta = (PLUGIN / "metadata.txt").read_text()
    repository = re.search(r"^repository=(.+)$", meta, re.M).group(1).strip()
    assert RELEASES_URL == f"{repository}/releases/download"


def test_metadata_names_a_reachable_project_not_placeholders():
    meta = dict(line.split("=", 1) for line in (PLUGIN / "metadata.txt").read_text().splitlines()
                if "=" in line and not line.startswith(" "))
    email = meta["email"].strip()
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", email)
    domain = email.split("@")[1]
    assert not re.search(r"(^|\.)(example\.(org|com|net)|invalid|test|localhost|local)$", domain)
    for key in ("homepage", "repository", "tracker"):
        assert meta[key].strip().startswith("https://github.com/rs-vlm/rs-vlm"), key
    assert meta["tracker"].strip().endswith("/issues")
