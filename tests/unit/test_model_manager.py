"""The model manager against a real HTTP server on 127.0.0.1: download with resume (Range), SHA-256,
atomic install, and a sentence for each failure with nothing half-installed."""

from __future__ import annotations

import json
import os
import socket
import sys
import zipfile
from pathlib import Path

import pytest

from rs_vlm_plugin.core.cli import main
from rs_vlm_plugin.core.errors import CancelledError, RsVlmError
from rs_vlm_plugin.core.models.archive import sha256_of, write_model_package
from rs_vlm_plugin.core.models.download import make_opener
from rs_vlm_plugin.core.models.install import (clean_partial, install_archive, install_from_registry,
                                               installed_models, remove_model)
from rs_vlm_plugin.core.models.registry import load_registry
from rs_vlm_plugin.core.progress import RecordingProgress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from http_server import FileServer  # noqa: E402

MB = 1 << 20


def make_bundle(folder: Path, name: str = "tiny", format_version: int = 2, seed: int = 0) -> Path:
    """A small bundle folder: a manifest and 3 MB of incompressible 'weights'."""
    bundle = folder / name
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps({"format": "rs-vlm-bundle", "format_version": format_version,
                                                      "name": name, "seed": seed}))
    (bundle / "image_encoder.onnx").write_bytes(os.urandom(3 * MB))
    return bundle


@pytest.fixture()
def published(tmp_path):
    """A model package served from 127.0.0.1, and a registry file that lists it."""
    site = tmp_path / "site"
    bundle = make_bundle(tmp_path / "src")
    package = write_model_package(bundle, site / "tiny-1.0.zip")
    with FileServer(site) as server:
        registry = tmp_path / "models.json"
        registry.write_text(json.dumps({"format": "rs-vlm-model-registry", "version": 1, "base_url": server.base_url,
                                        "models": [{"name": "tiny", "version": "1.0", "file": package.name,
                                                    "size": package.stat().st_size, "sha256": sha256_of(package),
                                                    "format_version": 2, "licence": "test"}]}))
        yield {"server": server, "registry": registry, "bundle": bundle, "package": package,
               "root": tmp_path / "models"}


def leftovers(root: Path) -> list[str]:
    """Everything in a models folder that is not a complete model or the downloads folder."""
    return sorted(p.name for p in root.iterdir() if p.name != ".downloads") if root.exists() else []


def part_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".downloads").glob("*")) if (root / ".downloads").exists() else []


def test_download_checks_and_installs_atomically(published):
    progress = RecordingProgress()
    folder = install_from_registry(load_registry(published["registry"]), "tiny", published["root"], progress=progress)
    assert folder == published["root"] / "tiny"
    assert sha256_of(folder / "image_encoder.onnx") == sha256_of(published["bundle"] / "image_encoder.onnx")
    assert json.loads((folder / "manifest.json").read_text())["package_version"] == "1.0"
    assert leftovers(published["root"]) == ["tiny"] and part_files(published["root"]) == []
    assert progress.fractions[-1] == 1.0 and len(progress.fractions) >= 3
    assert [m.name for m in installed_models(published["root"])] == ["tiny"]


def test_a_dropped_connection_is_resumed_with_a_range_request(published):
    server, registry = published["server"], load_registry(published["registry"])
    server.behaviour.drop_after, server.behaviour.drops_left = 1_000_000, 1
    with pytest.raises(RsVlmError, match="interrupted after 1,000,000 .* start it again to resume"):
        install_from_registry(registry, "tiny", published["root"])
    assert leftovers(published["root"]) == []  # nothing installed, only the part kept
    assert (published["root"] / ".downloads" / "tiny-1.0.zip.part").stat().st_size == 1_000_000
    install_from_registry(registry, "tiny", published["root"])
    assert server.behaviour.requests[-1] == ("/tiny-1.0.zip", "bytes=1000000-")
    assert leftovers(published["root"]) == ["tiny"] and part_files(published["root"]) == []


def test_a_server_that_ignores_ranges_restarts_from_the_start(published):
    server, registry = published["server"], load_registry(published["registry"])
    server.behaviour.drop_after, server.behaviour.drops_left = 500_000, 1
    with pytest.raises(RsVlmError):
        install_from_registry(registry, "tiny", published["root"])
    server.behaviour.ignore_range = True
    install_from_registry(registry, "tiny", published["root"])
    assert server.behaviour.requests[-1][1] == "bytes=500000-"  # asked, answered 200 with the whole file
    assert sha256_of(published["root"] / "tiny" / "image_encoder.onnx") == sha256_of(
        published["bundle"] / "image_encoder.onnx")


def test_a_wrong_hash_installs_nothing(published):
    server = published["server"]
    server.behaviour.replace = os.urandom(published["package"].stat().st_size)
    with pytest.raises(RsVlmError, match="not the expected one .* nothing was installed"):
        install_from_registry(load_registry(published["registry"]), "tiny", published["root"])
    assert leftovers(published["root"]) == [] and part_files(published["root"]) == []


def test_a_truncated_file_on_the_server_is_reported(published):
    published["server"].behaviour.replace = published["package"].read_bytes()[:-1000]
    with pytest.raises(RsVlmError, match="interrupted after .* start it again"):
        install_from_registry(load_registry(published["registry"]), "tiny", published["root"])
    assert leftovers(published["root"]) == []


def test_an_http_error_is_a_sentence(published):
    published["server"].behaviour.status = 503
    with pytest.raises(RsVlmError, match=r"refused the model download \(503"):
        install_from_registry(load_registry(published["registry"]), "tiny", published["root"])
    assert leftovers(published["root"]) == []


def test_no_network_is_a_sentence(published, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    with pytest.raises(RsVlmError, match="could not be downloaded .* check the network or the proxy"):
        install_from_registry(load_registry(published["registry"]), "tiny", published["root"], mirror=closed)
    assert leftovers(published["root"]) == []


def test_a_mirror_and_a_proxy_are_used(published, tmp_path):
    registry = load_registry(published["registry"])
    # the mirror's host does not exist: only the proxy (our server) can answer for it
    folder = install_from_registry(registry, "tiny", published["root"], mirror="http://mirror.invalid/",
                                   opener=make_opener(published["server"].base_url))
    assert folder.is_dir()
    assert published["server"].behaviour.requests[-1][0] == "http://mirror.invalid/tiny-1.0.zip"


def test_too_little_free_space_stops_before_downloading(published, tmp_path):
    data = json.loads(published["registry"].read_text())
    data["models"][0]["size"] = 1 << 60
    published["registry"].write_text(json.dumps(data))
    with pytest.raises(RsVlmError, match="not enough free space"):
        install_from_registry(load_registry(published["registry"]), "tiny", published["root"])
    assert published["server"].behaviour.requests == [] and leftovers(published["root"]) == []


def test_cancel_keeps_the_part_for_a_resume(published):
    progress = RecordingProgress(cancel_after=1)
    with pytest.raises(CancelledError):
        install_from_registry(load_registry(published["registry"]), "tiny", published["root"], progress=progress)
    assert leftovers(published["root"]) == [] and part_files(published["root"]) == ["tiny-1.0.zip.part"]
    install_from_registry(load_registry(published["registry"]), "tiny", published["root"])
    assert published["server"].behaviour.requests[-1][1] is not None


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("members, message", [
    ({"a/manifest.json": b"{}", "b/SHA256SUMS": b""}, "exactly one folder"),
    ({"tiny/../evil": b"x", "tiny/manifest.json": b"{}", "tiny/SHA256SUMS": b""}, "exactly one folder"),
    ({"tiny/manifest.json": b"{}"}, "no manifest.json and SHA256SUMS"),
])
def test_archives_that_are_not_packages_are_refused(tmp_path, members, message):
    with pytest.raises(RsVlmError, match=message):
        install_archive(_zip(tmp_path / "bad.zip", members), tmp_path / "models")
    assert leftovers(tmp_path / "models") == []


def test_a_damaged_or_foreign_package_is_refused(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(RsVlmError, match="is not a model package"):
        install_archive(tmp_path / "junk.zip", tmp_path / "models")
    package = write_model_package(make_bundle(tmp_path / "src"), tmp_path / "tiny.zip")
    with zipfile.ZipFile(package) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["tiny/image_encoder.onnx"] = members["tiny/image_encoder.onnx"][:-1] + b"!"
    with pytest.raises(RsVlmError, match="image_encoder.onnx in damaged.zip is damaged"):
        install_archive(_zip(tmp_path / "damaged.zip", members), tmp_path / "models")
    newer = write_model_package(make_bundle(tmp_path / "v3", format_version=3), tmp_path / "v3.zip")
    with pytest.raises(RsVlmError, match="bundle format 3; this version of RS-VLM reads"):
        install_archive(newer, tmp_path / "models")
    assert leftovers(tmp_path / "models") == []


def test_reinstalling_replaces_the_model_and_remove_deletes_it(tmp_path):
    root = tmp_path / "models"
    install_archive(write_model_package(make_bundle(tmp_path / "a", seed=1), tmp_path / "a.zip"), root)
    install_archive(write_model_package(make_bundle(tmp_path / "b", seed=2), tmp_path / "b.zip"), root)
    assert json.loads((root / "tiny" / "manifest.json").read_text())["seed"] == 2
    assert leftovers(root) == ["tiny"]
    (root / ".installing-killed").mkdir()  # what a killed install leaves
    assert [m.name for m in installed_models(root)] == ["tiny"]
    assert [p.name for p in clean_partial(root)] == [".installing-killed"]
    remove_model("tiny", root)
    assert leftovers(root) == []
    with pytest.raises(RsVlmError, match="No model 'tiny' is installed"):
        remove_model("tiny", root)


def test_the_command_line_lists_installs_and_removes(published, capsys):
    common = ["--registry", str(published["registry"]), "--models-dir", str(published["root"]), "-q"]
    assert main(["models", "list", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["installed"] is False
    assert main(["models", "install", "tiny", *common]) == 0
    assert "Installed tiny" in capsys.readouterr().out
    assert main(["models", "list", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["installed"] is True
    assert main(["models", "remove", "tiny", *common]) == 0
    assert main(["models", "install", "nothing", *common]) == 1
    assert "no model called 'nothing' in the registry" in capsys.readouterr().err
    assert main(["models", "install", str(published["package"]), *common]) == 0  # from a file, offline
    assert (published["root"] / "tiny" / "manifest.json").is_file()


def test_the_shipped_registry_is_valid():
    registry = load_registry()
    entry = registry.get("rs-vlm-lite0")
    assert registry.url_of(entry).startswith("https://github.com/rs-vlm/rs-vlm/releases/download/")
    assert registry.url_of(entry, "https://mirror.example.org/rs-vlm/") == \
        "https://mirror.example.org/rs-vlm/" + entry.file
    assert entry.size > 0 and len(entry.sha256) == 64 and entry.format_version == 2


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) for a real 'disk full' error")
def test_a_full_disk_during_the_download_is_a_sentence(published):
    downloads = published["root"] / ".downloads"
    downloads.mkdir(parents=True)
    (downloads / "tiny-1.0.zip.part").symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    with pytest.raises(RsVlmError, match="The disk is full: the model needs"):
        install_from_registry(load_registry(published["registry"]), "tiny", published["root"])
    assert leftovers(published["root"]) == [] and part_files(published["root"]) == []


@pytest.mark.parametrize("where", ["data", "sums"])
def test_a_package_with_one_byte_flipped_is_a_sentence(tmp_path, capsys, where):
    """A flipped byte inside a member's compressed data: the zip's CRC (or the deflate stream) breaks."""
    package = write_model_package(make_bundle(tmp_path / "src", "tiny"), tmp_path / "tiny-1.0.0.zip")
    data = bytearray(package.read_bytes())
    with zipfile.ZipFile(package) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith("image_encoder.onnx" if where == "data" else "SHA256SUMS"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x01
    package.write_bytes(bytes(data))
    root = tmp_path / "models"
    progress = RecordingProgress()
    with pytest.raises(RsVlmError, match=r"tiny-1\.0\.0\.zip is damaged .*download the package again"):
        install_archive(package, root, progress=progress)
    assert leftovers(root) == []
    # the command line: one sentence, exit 1, no traceback
    assert main(["models", "install", str(package), "--models-dir", str(root), "-q"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("Error: ") and err.count("\n") == 1
