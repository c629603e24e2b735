"""The model manager in QGIS: QGIS's proxy handed to urllib, the install task with progress and
Cancel, the panel's Models menu and its one-line hint, the Processing algorithm. A real HTTP server
on 127.0.0.1 serves the packages (and acts as the proxy)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from http_server import FileServer  # noqa: E402


@pytest.fixture()
def published(qgis_app, tmp_path):
    """A 3 MB model package on 127.0.0.1 and a registry that lists it."""
    from rs_vlm_plugin.core.models.archive import sha256_of, write_model_package

    bundle = tmp_path / "src" / "tiny"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text(json.dumps({"format": "rs-vlm-bundle", "format_version": 2}))
    (bundle / "image_encoder.onnx").write_bytes(os.urandom(3 << 20))
    package = write_model_package(bundle, tmp_path / "site" / "tiny-1.0.zip")
    with FileServer(package.parent) as server:
        registry = tmp_path / "models.json"
        registry.write_text(json.dumps({"format": "rs-vlm-model-registry", "version": 1, "base_url": server.base_url,
                                        "models": [{"name": "tiny", "version": "1.0", "file": package.name,
                                                    "size": package.stat().st_size, "sha256": sha256_of(package),
                                                    "format_version": 2}]}))
        yield {"server": server, "registry": registry, "package": package, "root": tmp_path / "models"}


@pytest.fixture()
def qgis_proxy(qgis_app):
    """Sets QGIS's proxy (as Settings > Network does) and restores "no proxy" after."""
    from qgis.core import QgsNetworkAccessManager
    from qgis.PyQt.QtNetwork import QNetworkProxy

    manager = QgsNetworkAccessManager.instance()

    def use(kind, host="", port=0, user="", password="", excludes=()):
        manager.setFallbackProxyAndExcludes(QNetworkProxy(kind, host, port, user, password), list(excludes), [])

    yield use
    use(QNetworkProxy.ProxyType.NoProxy)


def run_task(task):
    from qgis.core import QgsApplication

    seen = {}
    task.installFinished.connect(lambda folder: seen.setdefault("folder", folder))
    task.installFailed.connect(lambda message: seen.setdefault("error", message))
    QgsApplication.taskManager().addTask(task)
    wait_for(lambda: seen, 60)
    return seen


def test_qgis_proxy_settings_become_a_proxy_url(qgis_proxy):
    from qgis.PyQt.QtNetwork import QNetworkProxy

    from rs_vlm_plugin.qgis_shell.model_install import qgis_proxy_url

    qgis_proxy(QNetworkProxy.ProxyType.HttpProxy, "proxy.example.org", 3128, "me", "p@ss", ["http://intranet/"])
    assert qgis_proxy_url("https://github.com/x") == "http://me:p%40ss@proxy.example.org:3128"
    assert qgis_proxy_url("http://intranet/models/x.zip") == ""  # excluded: direct
    qgis_proxy(QNetworkProxy.ProxyType.NoProxy)
    assert qgis_proxy_url("https://github.com/x") == ""


def test_the_task_downloads_through_qgis_proxy(published, qgis_proxy):
    from qgis.PyQt.QtNetwork import QNetworkProxy

    from rs_vlm_plugin.qgis_shell.model_install import ModelInstallTask

    port = int(published["server"].base_url.rsplit(":", 1)[1].strip("/"))
    qgis_proxy(QNetworkProxy.ProxyType.HttpProxy, "127.0.0.1", port)
    task = ModelInstallTask(published["root"], name="tiny", mirror="http://mirror.invalid/",
                            registry=published["registry"])
    progress = []
    task.progressChanged.connect(progress.append)
    seen = run_task(task)
    assert seen.get("folder") == published["root"] / "tiny", seen
    assert published["server"].behaviour.requests[-1][0] == "http://mirror.invalid/tiny-1.0.zip"
    assert progress and max(progress) == 100


def test_cancel_stops_the_download_and_installs_nothing(published):
    from rs_vlm_plugin.qgis_shell.model_install import ModelInstallTask

    published["server"].behaviour.delay_s = 0.05  # about 1.3 MB/s: 3 MB take a few seconds
    task = ModelInstallTask(published["root"], name="tiny", registry=published["registry"])
    task.progressChanged.connect(lambda p: p > 5 and task.cancel())
    seen = run_task(task)
    assert "cancelled; nothing was installed" in seen.get("error", ""), seen
    assert not (published["root"] / "tiny").exists()
    assert [p.name for p in published["root"].iterdir()] == [".downloads"]


def test_a_wrong_hash_fails_the_task_with_a_sentence(published):
    from rs_vlm_plugin.qgis_shell.model_install import ModelInstallTask

    published["server"].behaviour.replace = os.urandom(published["package"].stat().st_size)
    seen = run_task(ModelInstallTask(published["root"], name="tiny", registry=published["registry"]))
    assert "is not the expected one" in seen.get("error", ""), seen
    assert not (published["root"] / "tiny").exists()


def test_the_panel_offers_downloads_and_says_what_to_do_without_a_model(qgis_app):
    from rs_vlm_plugin.qgis_shell.dock import NO_MODEL, RsVlmDock

    dock = RsVlmDock(None, [])
    assert dock.status_label.text() == NO_MODEL and not dock.run_button.isEnabled()
    dock.set_downloads([("rs-vlm-lite0", "rs-vlm-lite0 (58 MB)")])
    texts = [a.text() for a in dock.models_menu.actions() if not a.isSeparator()]
    assert texts == ["Download rs-vlm-lite0 (58 MB)…", "Install from file…", "Import CLIP checkpoint…"]
    asked = []
    dock.downloadRequested.connect(asked.append)
    dock.installFileRequested.connect(lambda: asked.append("file"))
    for action in dock.models_menu.actions():
        if not action.isSeparator() and "CLIP" not in action.text():
            action.trigger()
    assert asked == ["rs-vlm-lite0", "file"]
    dock.deleteLater()


def test_install_from_file_in_the_plugin_and_in_processing(plugin, published, tmp_path):
    import processing

    from rs_vlm_plugin.qgis_shell.settings import PluginSettings, available_models

    before = PluginSettings.load()
    try:
        PluginSettings(models_folder=str(published["root"])).save()
        task = plugin.install_model_file(published["package"])
        assert task is not None
        seen = {}
        task.installFinished.connect(lambda folder: seen.setdefault("folder", folder))
        task.installFailed.connect(lambda message: seen.setdefault("error", message))
        wait_for(lambda: seen, 60)
        assert seen.get("folder") == published["root"] / "tiny", seen
        assert PluginSettings.load().model == "tiny"  # chosen
        assert ("tiny", published["root"] / "tiny") in available_models(PluginSettings.load())
        (published["root"] / "tiny" / "manifest.json").unlink()
        result = processing.run("rsvlm:install_model", {"PACKAGE": str(published["package"])})
        assert Path(result["OUTPUT_FOLDER"]) == published["root"] / "tiny"
        assert (published["root"] / "tiny" / "manifest.json").is_file()
        from qgis.core import QgsProcessingException

        (tmp_path / "junk.zip").write_bytes(b"junk")
        with pytest.raises(QgsProcessingException, match="is not a model package"):
            processing.run("rsvlm:install_model", {"PACKAGE": str(tmp_path / "junk.zip")})
        damaged = bytearray(published["package"].read_bytes())
        damaged[len(damaged) // 2] ^= 0x01  # one byte flipped inside the weights' compressed data
        (tmp_path / "tiny-1.0.zip").write_bytes(bytes(damaged))
        with pytest.raises(QgsProcessingException, match=r"tiny-1\.0\.zip is damaged .*download the package again"):
            processing.run("rsvlm:install_model", {"PACKAGE": str(tmp_path / "tiny-1.0.zip")})
        task = plugin.install_model_file(tmp_path / "tiny-1.0.zip")
        seen = {}
        task.installFailed.connect(lambda message: seen.setdefault("error", message))
        wait_for(lambda: seen, 60)
        assert "is damaged" in seen["error"] and "unexpectedly" not in seen["error"]
    finally:
        before.save()
