"""Installing models from the panel and Processing: a download from the registry (or a mirror) or
a package file, in a QgsTask with progress and Cancel; the proxy is QGIS's own.

The work is the core's (:mod:`rs_vlm_plugin.core.models`); this module only hands it QGIS's proxy
settings and reports to a task.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsMessageLog, QgsNetworkAccessManager, QgsTask, Qgis
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtNetwork import QNetworkProxy

from ..core.errors import CancelledError, RsVlmError
from ..core.models.download import make_opener
from ..core.models.install import clean_partial, install_archive, install_from_registry
from ..core.models.registry import load_registry

LOG_TAG = "RS-VLM"
_HTTP_PROXIES = (QNetworkProxy.ProxyType.HttpProxy, QNetworkProxy.ProxyType.HttpCachingProxy)


def qgis_proxy_url(url: str = "") -> str:
    """QGIS's proxy (Settings > Options > Network) as a URL for urllib; "" for none or the system's.

    "" lets urllib use the system's proxies (environment, and the OS settings on Windows and
    macOS), which is what QGIS does with "Use system proxy". A URL QGIS excludes from its
    proxy goes direct.
    """
    manager = QgsNetworkAccessManager.instance()
    proxy = manager.fallbackProxy()
    if proxy.type() not in _HTTP_PROXIES or not proxy.hostName():
        return ""
    if url and any(prefix and url.startswith(prefix) for prefix in manager.excludeList()):
        return ""
    auth = ""
    if proxy.user():
        from urllib.parse import quote

        auth = quote(proxy.user(), safe="") + (":" + quote(proxy.password(), safe="") if proxy.password() else "") + "@"
    return f"http://{auth}{proxy.hostName()}:{proxy.port()}"


class ModelInstallTask(QgsTask):
    """Download and install a registry model, or install a package file, in the background.

    Signals (main thread, except ``stageChanged``, queued there):
        stageChanged(str): The stage now running.
        installFinished(object): The installed bundle folder (a Path).
        installFailed(str): The sentence saying why (or that it was cancelled).

    Args:
        models_root: The models folder.
        name: A registry model's name (download), or None to install ``package``.
        package: A model package file (a zip), when ``name`` is None.
        mirror: A base URL to download from instead of the registry's.
        registry: The registry file; default the plugin's.
    """

    stageChanged = pyqtSignal(str)
    installFinished = pyqtSignal(object)
    installFailed = pyqtSignal(str)

    def __init__(self, models_root: Path, name: str | None = None, package: Path | None = None, mirror: str = "",
                 registry: Path | None = None) -> None:
        what = name or (package.name if package else "?")
        super().__init__(f"RS-VLM: install the model {what}", QgsTask.Flag.CanCancel)
        self.models_root, self.name, self.package, self.mirror = Path(models_root), name, package, mirror
        self.registry = load_registry(registry)  # read on the main thread: a broken file fails at once
        # proxy settings are read here, on the main thread; the worker thread only uses the string
        url = self.registry.url_of(self.registry.get(name), mirror) if name else ""
        self.proxy = qgis_proxy_url(url)
        self.folder: Path | None = None
        self.error: str | None = None

    def run(self) -> bool:  # noqa: D102 - worker thread
        from .task import TaskProgress

        progress = TaskProgress(self)
        try:
            clean_partial(self.models_root)
            if self.name:
                self.folder = install_from_registry(self.registry, self.name, self.models_root, self.mirror, progress,
                                                    make_opener(self.proxy))
            else:
                self.folder = install_archive(self.package, self.models_root, progress=progress)
            return True
        except CancelledError:
            self.error = "The model installation was cancelled; nothing was installed (a download resumes next time)."
        except RsVlmError as exc:
            self.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: keep it in the log, say so in one line
            import traceback

            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.MessageLevel.Critical)
            self.error = f"Installing the model failed unexpectedly ({exc}); the details are in the RS-VLM log."
        return False

    def finished(self, ok: bool) -> None:  # noqa: D102 - main thread
        if ok:
            self.installFinished.emit(self.folder)
        else:
            self.installFailed.emit(self.error or "The model installation was cancelled; nothing was installed.")
