"""The plugin's model actions behind the panel's Models menu: download a registry
model, install a package file, import an open_clip checkpoint, each as a background task; the new
model is then chosen in the picker. Mixed into :class:`~.plugin.RsVlmPlugin`, whose task, dock and
messages they use."""

from __future__ import annotations

import time
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtWidgets import QFileDialog

from ..core.errors import RsVlmError
from .settings import PluginSettings, available_models, models_root


class ModelActions:
    """Model actions of the plugin (needs ``task``, ``dock``, ``_started`` and the plugin's
    ``_message``, ``_refuse``, ``_task_alive``, ``_main_window``, ``_on_progress``, ``_on_stage``,
    ``_on_failed``)."""

    def import_model(self, checkpoint=None, name: str = "", arch: str = "auto", quick_gelu: bool = False,
                     python: str | None = None):
        """Import an open_clip checkpoint as a model bundle in the background; it then appears (chosen)
        in the model picker.

        Args:
            checkpoint: The checkpoint file; None asks for it.
            name: The model's name (default: the file name).
            arch: An architecture name, or "auto" to recognise it from the checkpoint.
            quick_gelu: The checkpoint uses quick GELU (SkyCLIP).
            python: An interpreter with torch (default: the project's .venv, else this Python).

        Returns:
            The started :class:`~.model_import.ModelImportTask`, or None.
        """
        from .child_python import default_python
        from .model_import import ModelImportTask
        from .processing.model_algorithms import import_arguments, imported_model_folder

        if self.task is not None and self._task_alive():
            self._message("An RS-VLM job is running; wait for it or cancel it before importing a model.", Qgis.MessageLevel.Warning)
            return None
        if checkpoint is None:
            checkpoint, _ = QFileDialog.getOpenFileName(
                self._main_window(), "RS-VLM: import an open_clip checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP)", "",
                "PyTorch checkpoints (*.pt *.pth *.bin *.ckpt);;All files (*)")
            if not checkpoint:
                return None
        checkpoint = Path(checkpoint)
        name = name.strip() or checkpoint.stem
        # quick GELU cannot be seen in the weights; SkyCLIP's checkpoints use it (Processing's QUICK_GELU overrides)
        quick_gelu = quick_gelu or "skyclip" in checkpoint.name.lower()
        try:
            folder = imported_model_folder(name)
        except RsVlmError as exc:
            self._refuse(str(exc))
            return None
        task = ModelImportTask(python or default_python(), import_arguments(checkpoint, folder, name, arch, quick_gelu),
                               folder)
        task.progressChanged.connect(self._on_progress)
        task.importFinished.connect(self._on_imported)
        task.importFailed.connect(self._on_failed)
        self.task = task
        self._started = time.perf_counter()
        if self.dock is not None:
            self.dock.set_running(True)
            gelu = " (quick GELU, as SkyCLIP)" if quick_gelu else ""
            self.dock.set_status(f"Importing {checkpoint.name} as the model {folder.name}{gelu}...")
        QgsApplication.taskManager().addTask(task)
        return task

    def download_model(self, name: str):
        """Download a registry model (from the mirror in the settings, if any) and install it, in the
        background with progress and Cancel; it is then chosen in the model picker.

        Returns:
            The started :class:`~.model_install.ModelInstallTask`, or None.
        """
        from .model_install import ModelInstallTask

        settings = PluginSettings.load()
        return self._start_install(lambda: ModelInstallTask(models_root(settings), name=name,
                                                            mirror=settings.model_mirror),
                                   f"Downloading the model {name}...")

    def install_model_file(self, package=None):
        """Install a model package file (a zip from the project's releases) in the background.

        Args:
            package: The zip; None asks for it.

        Returns:
            The started :class:`~.model_install.ModelInstallTask`, or None.
        """
        from .model_install import ModelInstallTask

        if package is None:
            package, _ = QFileDialog.getOpenFileName(self._main_window(), "RS-VLM: install a model package", "",
                                                     "RS-VLM model packages (*.zip);;All files (*)")
            if not package:
                return None
        package = Path(package)
        settings = PluginSettings.load()
        return self._start_install(lambda: ModelInstallTask(models_root(settings), package=package),
                                   f"Installing the model package {package.name}...")

    def _start_install(self, make_task, status: str):
        if self.task is not None and self._task_alive():
            self._message("An RS-VLM job is running; wait for it or cancel it before installing a model.",
                          Qgis.MessageLevel.Warning)
            return None
        try:
            task = make_task()
        except RsVlmError as exc:
            self._refuse(str(exc))
            return None
        task.progressChanged.connect(self._on_progress)
        task.stageChanged.connect(self._on_stage)
        task.installFinished.connect(lambda folder: self._on_model_ready(folder, "installed"))
        task.installFailed.connect(self._on_failed)
        self.task = task
        self._started = time.perf_counter()
        if self.dock is not None:
            self.dock.set_running(True)
            self.dock.set_status(status)
        QgsApplication.taskManager().addTask(task)
        return task

    def _on_imported(self, folder) -> None:
        self._on_model_ready(folder, "imported")

    def _on_model_ready(self, folder, verb: str) -> None:
        self.task = None
        settings = PluginSettings.load()
        settings.model = Path(folder).name
        settings.save()
        text = f"The model {Path(folder).name} is {verb} ({folder}) and chosen in the RS-VLM panel."
        if self.dock is not None:
            self.dock.set_running(False)
            self.dock.set_progress(100)
            self._refresh_models(settings)
            self.dock.set_status(text)
        self._message(text, Qgis.MessageLevel.Success)

    def _refresh_models(self, settings: PluginSettings) -> None:
        """The picker's models and the Models menu's downloads (registry models not installed)."""
        from ..core.models.registry import load_registry

        models = available_models(settings)
        installed = {name for name, _ in models}
        try:
            offers = [(e.name, f"{e.name} ({e.size / 1e6:.0f} MB)") for e in load_registry().models
                      if e.name not in installed]
        except RsVlmError as exc:
            offers = []
            QgsMessageLog.logMessage(str(exc), "RS-VLM", Qgis.MessageLevel.Warning)
        self.dock.set_downloads(offers)
        self.dock.set_models(models, settings.model_name)
