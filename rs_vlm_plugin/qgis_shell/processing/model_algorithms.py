"""Model algorithms: install a model (download from the registry or a package file), export the RS-VLM
model and import open_clip checkpoints (the last two run the project's torch code in a separate Python
process; QGIS's Python never needs torch)."""

from __future__ import annotations

import shutil
from pathlib import Path

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingFeedback,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingOutputFolder,
    QgsProcessingParameterString,
)

from ...core.errors import CancelledError, RsVlmError
from ...core.models.download import make_opener
from ...core.models.install import clean_partial, install_archive, install_from_registry
from ...core.models.registry import load_registry
from ..child_python import PLUGIN_ROOT, child_error, default_python, stream_command
from ..settings import PluginSettings, models_root
from .algorithms import RsVlmAlgorithm
from .feedback import FeedbackProgress


class InstallModelAlgorithm(RsVlmAlgorithm):
    """Download a model of the registry (or install a package file) into the models folder."""

    def name(self) -> str:  # noqa: D102
        return "install_model"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Install model")

    def group(self) -> str:  # noqa: D102
        return self.tr("Model")

    def groupId(self) -> str:  # noqa: D102, N802
        return "model"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Installs a model into the models folder of the RS-VLM settings (rs_vlm_models in the QGIS settings "
            "folder unless one is chosen), where the panel and the other algorithms find it.\n\n"
            "MODEL downloads that model of the plugin's registry from the project's releases, or from MIRROR "
            "(default: the mirror of the settings) through QGIS's proxy; an interrupted download resumes, and "
            "the file is checked by its SHA-256 before anything is installed. PACKAGE installs a model package "
            "file (.zip) instead, without network. Nothing half-installed is ever left in the folder.")

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        try:
            names = [e.name for e in load_registry().models]
        except RsVlmError:  # a damaged registry must not take the provider down; PACKAGE still works
            names = []
        self.addParameter(QgsProcessingParameterEnum("MODEL", self.tr("Model to download"), names, defaultValue=0,
                                                     optional=True))
        self.addParameter(QgsProcessingParameterFile("PACKAGE", self.tr("Or a model package file (.zip)"),
                                                     extension="zip", optional=True))
        self.addParameter(QgsProcessingParameterString("MIRROR", self.tr("Mirror base URL (default: the settings')"),
                                                       optional=True))
        self.addOutput(QgsProcessingOutputFolder("OUTPUT_FOLDER", self.tr("Installed model folder")))

    def process(self, parameters, context, feedback) -> dict:  # noqa: D102
        from ..model_install import qgis_proxy_url

        settings = PluginSettings.load()
        root = models_root(settings)
        package = self.parameterAsFile(parameters, "PACKAGE", context)
        progress = FeedbackProgress(feedback)
        try:
            clean_partial(root)
            if package:
                folder = install_archive(Path(package), root, progress=progress)
            else:
                registry = load_registry()
                entry = registry.models[self.parameterAsEnum(parameters, "MODEL", context)]
                mirror = (self.parameterAsString(parameters, "MIRROR", context) or settings.model_mirror).strip()
                feedback.pushInfo(f"Downloading {registry.url_of(entry, mirror)} ({entry.size / 1e6:.0f} MB)")
                opener = make_opener(qgis_proxy_url(registry.url_of(entry, mirror)))
                folder = install_from_registry(registry, entry.name, root, mirror, progress, opener)
        except CancelledError:
            feedback.pushInfo("Cancelled; nothing was installed (a download resumes next time).")
            return {}
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushInfo(f"Installed {folder.name} in {folder}.")
        return {"OUTPUT_FOLDER": str(folder)}


class ExportModelAlgorithm(RsVlmAlgorithm):
    """Export the model to an ONNX bundle with torch, in a separate Python process."""

    def name(self) -> str:  # noqa: D102
        return "export_model"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Export model to ONNX")

    def group(self) -> str:  # noqa: D102
        return self.tr("Model")

    def groupId(self) -> str:  # noqa: D102, N802
        return "model"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Exports the RS-VLM model (image and text towers, tokenizer, knowledge base) to an ONNX "
            "bundle folder that the other algorithms read with their MODEL parameter.\n\n"
            "The export needs torch, which QGIS's Python usually lacks, so it runs "
            "\"python -m rs_vlm_plugin.modeling.export\" in another interpreter: PYTHON, or when empty "
            "the project's .venv beside the plugin source if there is one, else the Python running "
            "QGIS (or python3 on the PATH). Cancelling stops the export; nothing is left in the folder "
            "by a cancelled export except what the exporter had already written.\n\n"
            "WEIGHTS: trained head weights (.npz); empty uses the plugin's. A plugin installed from the "
            "plugin repository carries no weights: then the installed trained model (Models > Download) "
            "is copied to the folder as it is, and with none installed the export stops with a sentence "
            "rather than export an untrained model."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterString(
            "PYTHON", self.tr("Python interpreter with torch (default: see help)"), optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "WEIGHTS", self.tr("Head weights (.npz, default: the plugin's)"), extension="npz", optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", self.tr("Model bundle folder")))

    def process(self, parameters, context, feedback) -> dict:  # noqa: D102
        folder = Path(self.parameterAsFileOutput(parameters, "OUTPUT_FOLDER", context))
        arguments = ["rs_vlm_plugin.modeling.export", "--out", str(folder)]
        weights = self.parameterAsFile(parameters, "WEIGHTS", context) if "WEIGHTS" in parameters else ""
        if weights:
            arguments += ["--weights", weights]
        elif not PLUGIN_WEIGHTS.exists():
            return export_installed_model(folder, feedback)
        return run_model_command(self.python(parameters, context), arguments, folder, "model export", feedback)

    def python(self, parameters, context) -> str:
        """PYTHON, or the default interpreter with torch; a sentence when it does not exist."""
        python = (self.parameterAsString(parameters, "PYTHON", context) or "").strip() or default_python()
        if not (Path(python).exists() or shutil.which(python)):
            raise QgsProcessingException(
                f"The Python interpreter {python} does not exist; give the path of a Python that has torch.")
        return python


PLUGIN_WEIGHTS = PLUGIN_ROOT / "resources" / "weights" / "rs_vlm_lite0.npz"
"""The trained weights the exporter reads; in a source checkout, never in the plugin repository's zip."""
NO_TRAINED_WEIGHTS = ("This RS-VLM has no trained weights to export and no trained model is installed; install the "
                      "model with the panel's Models > Download (or RS-VLM > Model > Install model) and export "
                      "again, or give WEIGHTS.")


def export_installed_model(folder: Path, feedback) -> dict:
    """Copy the installed trained default model to ``folder`` (the export of a plugin without weights).

    Raises:
        QgsProcessingException: No trained model with a caption decoder is installed (one sentence).
    """
    import json
    import os
    import tempfile

    from ..settings import DEFAULT_MODEL_NAME, available_models

    installed = dict(available_models(PluginSettings.load())).get(DEFAULT_MODEL_NAME)
    manifest = {}
    if installed is not None:
        try:
            manifest = json.loads((Path(installed) / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
    if not (manifest.get("trained") and manifest.get("decoder")):
        raise QgsProcessingException(NO_TRAINED_WEIGHTS)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        shutil.copytree(installed, work / "bundle")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work / "bundle", folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    feedback.pushInfo(f"This plugin has no training weights; the installed trained model {DEFAULT_MODEL_NAME} "
                      f"({installed}) was copied to {folder}.")
    feedback.setProgress(100)
    return {"OUTPUT_FOLDER": str(folder)}


CLIP_ARCHITECTURES = ("auto", "RN50", "ViT-B-32", "ViT-L-14", "ViT-L-14-336", "ViT-H-14")
"""ARCH choices of the import: "auto" recognises the architecture from the checkpoint's keys and shapes."""


class ImportModelAlgorithm(ExportModelAlgorithm):
    """Import an open_clip checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP) as an ONNX bundle."""

    def name(self) -> str:  # noqa: D102
        return "import_model"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Import CLIP checkpoint as a model")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Turns an open_clip checkpoint (RemoteCLIP, GeoRSCLIP, SkyCLIP: RN50, ViT-B-32, ViT-L-14, "
            "ViT-L-14-336, ViT-H-14) into an ONNX model bundle that every RS-VLM tool can use, next to the "
            "bundled model: image and text towers, the CLIP tokenizer, preprocessing and the knowledge base "
            "in that model's text space. Captions are composed from the knowledge base.\n\n"
            "The checkpoint is read safely (tensors only; a file that would run code is refused) and its "
            "architecture is recognised from its keys and shapes unless ARCH says it; QUICK_GELU is for "
            "SkyCLIP. Missing or unexpected tensors are reported, never ignored.\n\n"
            "Like the model export it runs \"python -m rs_vlm_plugin.modeling.import_clip\" in a Python with "
            "torch (PYTHON; default: the project's .venv, else this Python). OUTPUT_FOLDER defaults to a "
            "sub-folder of the imported-models folder of the RS-VLM settings, where the panel's model "
            "picker finds it."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterFile("CHECKPOINT", self.tr("open_clip checkpoint (.pt, .bin, .pth)")))
        self.addParameter(QgsProcessingParameterEnum("ARCH", self.tr("Architecture"), list(CLIP_ARCHITECTURES),
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterBoolean("QUICK_GELU", self.tr("Quick GELU (SkyCLIP)"), False))
        self.addParameter(QgsProcessingParameterString("NAME", self.tr("Model name (default: the file name)"),
                                                       optional=True))
        self.addParameter(QgsProcessingParameterString("LICENSE", self.tr("License of the weights"), optional=True))
        self.addParameter(QgsProcessingParameterString(
            "PYTHON", self.tr("Python interpreter with torch (default: see help)"), optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT_FOLDER", self.tr("Model bundle folder (default: in the imported-models folder)"), optional=True))

    def process(self, parameters, context, feedback) -> dict:  # noqa: D102
        checkpoint = Path(self.parameterAsFile(parameters, "CHECKPOINT", context))
        if not checkpoint.is_file():
            raise QgsProcessingException(f"The checkpoint {checkpoint} does not exist; choose the .pt file to import.")
        name = (self.parameterAsString(parameters, "NAME", context) or "").strip() or checkpoint.stem
        given = self.parameterAsFileOutput(parameters, "OUTPUT_FOLDER", context) if parameters.get("OUTPUT_FOLDER") else ""
        folder = Path(given) if given else imported_model_folder(name)
        arch = CLIP_ARCHITECTURES[self.parameterAsEnum(parameters, "ARCH", context)]
        arguments = import_arguments(checkpoint, folder, name, arch,
                                     self.parameterAsBool(parameters, "QUICK_GELU", context),
                                     (self.parameterAsString(parameters, "LICENSE", context) or "").strip())
        return run_model_command(self.python(parameters, context), arguments, folder, "model import", feedback)


def import_arguments(checkpoint: Path, folder: Path, name: str, arch: str = "auto", quick_gelu: bool = False,
                     license_text: str = "") -> list[str]:
    """The importer's module and arguments (``python -m`` them)."""
    arguments = ["rs_vlm_plugin.modeling.import_clip", str(checkpoint), "--out", str(folder), "--name", name]
    if arch != "auto":
        arguments += ["--arch", arch]
    if quick_gelu:
        arguments.append("--quick-gelu")
    if license_text:
        arguments += ["--license", license_text]
    return arguments


def imported_model_folder(name: str) -> Path:
    """A new folder for an imported bundle in the models folder (:func:`settings.models_root`)."""
    from ..outputs import ensure_writable_folder, unique_path

    parent = ensure_writable_folder(models_root(PluginSettings.load()))
    return unique_path(parent, "".join(c if c.isalnum() or c in "-_." else "_" for c in name), suffix="")


def run_model_command(python: str, arguments: list[str], folder: Path, what: str,
                      feedback: QgsProcessingFeedback) -> dict:
    """Run ``python -m <arguments>`` that writes a bundle into ``folder``, with progress; its outputs."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    command = [python, "-m", *arguments]
    feedback.pushCommandInfo(" ".join(command))
    code, lines = run_streaming(command, feedback, cwd=PLUGIN_ROOT.parent)
    if code != 0 and created and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # a failed or cancelled run leaves no empty folder behind
    if code is None:
        feedback.pushInfo(f"Cancelled; the {what} was stopped.")
        return {}
    if code != 0:
        raise QgsProcessingException(child_error(what, python, code, lines))
    if not (folder / "manifest.json").exists():
        raise QgsProcessingException(f"The {what} finished but wrote no manifest.json in {folder}; see the log above.")
    feedback.setProgress(100)
    return {"OUTPUT_FOLDER": str(folder)}


def run_streaming(command: list[str], feedback: QgsProcessingFeedback, cwd: Path,
                  poll_s: float = 0.1) -> tuple[int | None, list[str]]:
    """Run a child process, streaming its output to ``feedback``; kill it on cancel.

    Lines "PROGRESS <0-100>" set the progress bar; other lines are logged.

    Returns:
        ``(exit code, output lines)``; the exit code is None when the user cancelled.
    """
    try:
        return stream_command(command, cwd, on_progress=feedback.setProgress, on_line=feedback.pushConsoleInfo,
                              is_canceled=feedback.isCanceled, poll_s=poll_s)
    except OSError as exc:
        raise QgsProcessingException(f"Could not start {command[0]} ({exc}); check the PYTHON parameter.") from exc


def model_algorithms() -> list:
    """One instance of each model algorithm."""
    return [InstallModelAlgorithm(), ExportModelAlgorithm(), ImportModelAlgorithm()]
