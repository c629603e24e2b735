"""The RS-VLM Processing algorithms.

Layers are resolved and their providers cloned in ``prepareAlgorithm`` (main thread); the
heavy work runs in ``processAlgorithm`` (a worker thread in the GUI) through the same job
runner as the panel (:func:`..task.execute`), reporting to Processing feedback.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from pathlib import Path

from qgis.core import (
    QgsCoordinateTransform,
    QgsCsException,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ...core.bundle import default_bundle_dir
from ...core.dris import PlanConfig
from ...core.errors import CancelledError, RsVlmError
from ...core.geometry import Extent
from ...core.gpkg import write_geopackage
from ...core.pipeline import JobConfig, SearchResult, check_query, result_kinds, result_layers
from ...core.progress import SubProgress
from ...core.records import CaptionRecord
from ..extent import to_extent
from ..layers import BATCH_LAYER, display_name, style_layer
from ..outputs import ensure_writable_folder, unique_path
from ..source import QgsLayerSource
from ..task import JobRequest, execute
from .provider import ICON_PATH

PLUGIN_ROOT = Path(__file__).resolve().parents[2]
"""The ``rs_vlm_plugin`` package folder."""

GPKG_FILTER = "GeoPackage (*.gpkg *.GPKG)"
MAX_TILE_BUDGET = 4096
CANCELLED = "Cancelled; no output was written."


class FeedbackProgress:
    """ProgressBackend over QgsProcessingFeedback: progress bar, log and the Cancel button."""

    def __init__(self, feedback: QgsProcessingFeedback | None) -> None:
        self.feedback = feedback if feedback is not None else QgsProcessingFeedback()

    def set_stage(self, stage: str) -> None:  # noqa: D102
        self.feedback.setProgressText(stage)

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        self.feedback.setProgress(100.0 * max(0.0, min(1.0, fraction)))

    def is_canceled(self) -> bool:  # noqa: D102
        return self.feedback.isCanceled()

    def info(self, message: str) -> None:  # noqa: D102
        self.feedback.pushInfo(message)

    def warn(self, message: str) -> None:  # noqa: D102
        self.feedback.pushWarning(message)


class StyleOnLoad(QgsProcessingLayerPostProcessorInterface):
    """Styles a result layer when Processing loads it into the project (main thread)."""

    def __init__(self, layer_name: str) -> None:
        super().__init__()
        self.layer_name = layer_name

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: D102, N802
        style_layer(layer, self.layer_name)


# The processing context deletes the post-processors it was given once it is done with them,
# but only a C++ pointer is kept: Python must hold the wrappers until then, or they would be
# collected while QGIS still calls them. Wrappers QGIS has deleted are dropped on each new run.
_STYLE_ON_LOAD: list[StyleOnLoad] = []


def _style_on_load(layer_name: str) -> StyleOnLoad:
    _STYLE_ON_LOAD[:] = [p for p in _STYLE_ON_LOAD if not sip.isdeleted(p)]
    processor = StyleOnLoad(layer_name)
    _STYLE_ON_LOAD.append(processor)
    return processor


class RsVlmAlgorithm(QgsProcessingAlgorithm):
    """Shared parameters and helpers of the RS-VLM algorithms."""

    prepare_error: QgsProcessingException | None = None

    def tr(self, text: str) -> str:  # noqa: D102
        return QCoreApplication.translate("RsVlm", text)

    def createInstance(self):  # noqa: D102, N802
        return type(self)()

    def group(self) -> str:  # noqa: D102
        return self.tr("Imagery")

    def groupId(self) -> str:  # noqa: D102, N802
        return "imagery"

    def icon(self) -> QIcon:  # noqa: D102
        return QIcon(str(ICON_PATH))

    # Running ------------------------------------------------------------------------------

    def prepareAlgorithm(self, parameters, context, feedback) -> bool:  # noqa: D102, N802
        # Layers are resolved and cloned here, on the main thread. A problem found now is
        # raised from processAlgorithm instead: Processing reports prepare errors only through
        # the feedback, so scripts (processing.run) and qgis_process would get a generic
        # "There were errors executing the algorithm" instead of the sentence.
        self.prepare_error = None
        try:
            self.gather(parameters, context, feedback)
        except QgsProcessingException as exc:
            self.prepare_error = exc
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: D102, N802
        if self.prepare_error is not None:
            raise self.prepare_error
        return self.process(parameters, context, feedback)

    def gather(self, parameters, context, feedback) -> None:
        """Resolve layers and read parameters on the main thread (raise QgsProcessingException)."""

    def process(self, parameters, context, feedback) -> dict:
        """Do the work (worker thread in the GUI) and return the outputs."""
        raise NotImplementedError

    # Parameters ---------------------------------------------------------------------------

    def add_budget_parameter(self) -> None:
        """MAX_TILES: the DRIS tile budget."""
        param = QgsProcessingParameterNumber(
            "MAX_TILES", self.tr("Tile budget (most fine tiles the model looks at)"),
            QgsProcessingParameterNumber.Integer, PlanConfig().max_tiles, False, 1, MAX_TILE_BUDGET)
        self.addParameter(param)

    def add_extent_parameter(self) -> None:
        """EXTENT: optional part of the raster (default: all of it)."""
        self.addParameter(QgsProcessingParameterExtent(
            "EXTENT", self.tr("Extent (default: the whole raster)"), optional=True))

    def add_model_parameter(self) -> None:
        """MODEL: optional bundle folder; empty means the plugin's model.

        The default stays empty rather than the absolute path of the plugin's model, so saved
        models and batch files keep working when the plugin is installed elsewhere.
        """
        self.addParameter(QgsProcessingParameterFile(
            "MODEL", self.tr("Model bundle folder (default: the plugin's model)"),
            behavior=QgsProcessingParameterFile.Folder, optional=True))

    def add_gpkg_output(self, description: str) -> None:
        """OUTPUT: the GeoPackage to write."""
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", self.tr(description), GPKG_FILTER))

    # Values -------------------------------------------------------------------------------

    def model_dir(self, parameters, context) -> Path:
        """The bundle folder: MODEL, or the plugin's default model."""
        folder = self.parameterAsFile(parameters, "MODEL", context) if "MODEL" in parameters else ""
        return Path(folder) if folder else default_bundle_dir()

    def raster_source(self, parameters, context, name: str = "INPUT"):
        """The raster parameter as a thread-safe source and its layer (call on the main thread)."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        try:
            return QgsLayerSource(layer), layer
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def job_extent(self, parameters, context, source: QgsLayerSource, crs) -> Extent | None:
        """EXTENT in the raster's CRS and clipped to it; None for the whole raster."""
        rect = self.parameterAsExtent(parameters, "EXTENT", context, crs)
        if rect is None or rect.isNull():
            return None
        try:
            return source.georef.clip(to_extent(rect))
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def gpkg_path(self, parameters, context) -> Path:
        """OUTPUT as a path; a sentence-error unless it is a GeoPackage."""
        path = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        if path.suffix.lower() != ".gpkg":
            raise QgsProcessingException(
                f"The output {path} is not a GeoPackage; give a file name ending in .gpkg.")
        return path

    def load_on_completion(self, context: QgsProcessingContext, gpkg: Path, layer_names, query: str = "") -> None:
        """Ask Processing to load and style the result layers when it loads outputs (GUI)."""
        project = context.project()
        if project is None:
            return
        for name in layer_names:
            details = QgsProcessingContext.LayerDetails(display_name(name, query), project, "OUTPUT",
                                                        QgsProcessingUtils.LayerHint.Vector)
            details.setPostProcessor(_style_on_load(name))
            context.addLayerToLoadOnCompletion(f"{gpkg}|layername={name}", details)


class CaptionRasterAlgorithm(RsVlmAlgorithm):
    """Caption a raster at three levels (global, region, object)."""

    def name(self) -> str:  # noqa: D102
        return "caption_raster"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Caption raster")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Describes a raster in words at three levels: one caption for the whole extent (global), "
            "one per quadrant (region) and one per fine tile (object). DRIS spends the tile budget "
            "where the image is busy. Works with any raster layer, including WMS and XYZ tiles.\n\n"
            "Output: a GeoPackage with the layers captions_global, captions_region and captions_object "
            "(caption, best concepts with scores, ground sample distance, complexity).\n\n"
            "EXTENT: the part to describe (default: the whole raster); it is transformed to the raster's "
            "CRS. MODEL: a model bundle folder (default: the plugin's model, built by "
            "\"python3 build.py setup\")."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.add_extent_parameter()
        self.add_budget_parameter()
        self.add_model_parameter()
        self.add_gpkg_output("Captions")
        self.addOutput(QgsProcessingOutputString("GLOBAL_CAPTION", self.tr("Global caption")))
        self.addOutput(QgsProcessingOutputNumber("N_TILES", self.tr("Number of DRIS tiles")))

    def gather(self, parameters, context, feedback) -> None:  # noqa: D102
        self.source, self.layer = self.raster_source(parameters, context)
        self.extent = self.job_extent(parameters, context, self.source, self.layer.crs())

    def job_request(self, parameters, context) -> JobRequest:
        """The job of this run."""
        max_tiles = self.parameterAsInt(parameters, "MAX_TILES", context)
        return JobRequest("describe", self.source, self.extent, JobConfig(plan=PlanConfig(max_tiles=max_tiles)),
                          model_dir=self.model_dir(parameters, context), output=self.gpkg_path(parameters, context))

    def process(self, parameters, context, feedback) -> dict:  # noqa: D102
        request = self.job_request(parameters, context)
        try:
            outcome = execute(request, FeedbackProgress(feedback))
        except CancelledError:
            feedback.pushInfo(CANCELLED)
            return {}
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc
        self.load_outputs(context, outcome)
        return self.results(outcome)

    def load_outputs(self, context, outcome) -> None:
        """Ask Processing to load the written layers, styled, when it loads outputs."""
        query = outcome.result.query if isinstance(outcome.result, SearchResult) else ""
        self.load_on_completion(context, outcome.output, list(outcome.layers), query)

    def results(self, outcome) -> dict:
        """The algorithm's outputs from a finished job."""
        return {"OUTPUT": str(outcome.output), "GLOBAL_CAPTION": outcome.result.global_caption,
                "N_TILES": outcome.result.plan.n_tiles}


class SearchRasterAlgorithm(CaptionRasterAlgorithm):
    """Rank the tiles of a raster by similarity to a text."""

    def name(self) -> str:  # noqa: D102
        return "search_raster"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Search raster by text")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Finds the places in a raster that match a text, for example \"a parking lot full of cars\" "
            "or \"storage tanks next to a river\". The raster is tiled with DRIS, each tile is compared "
            "with the text in the model's joint space, and the best TOP_K tiles are written, best first.\n\n"
            "Output: a GeoPackage layer search_hits (query, rank, score = cosine similarity, level, "
            "ground sample distance, the tile's caption). BEST_SCORE is the first hit's score."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.addParameter(QgsProcessingParameterString("QUERY", self.tr("Search text")))
        self.add_extent_parameter()
        self.add_budget_parameter()
        self.addParameter(QgsProcessingParameterNumber(
            "TOP_K", self.tr("Number of hits to keep"), QgsProcessingParameterNumber.Integer, 10, False, 1, 1000))
        self.add_model_parameter()
        self.add_gpkg_output("Search hits")
        self.addOutput(QgsProcessingOutputNumber("N_HITS", self.tr("Number of hits")))
        self.addOutput(QgsProcessingOutputNumber("BEST_SCORE", self.tr("Best score")))

    def gather(self, parameters, context, feedback) -> None:  # noqa: D102
        try:
            self.query = check_query(self.parameterAsString(parameters, "QUERY", context))
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc
        super().gather(parameters, context, feedback)

    def job_request(self, parameters, context) -> JobRequest:  # noqa: D102
        max_tiles = self.parameterAsInt(parameters, "MAX_TILES", context)
        top_k = self.parameterAsInt(parameters, "TOP_K", context)
        config = JobConfig(plan=PlanConfig(max_tiles=max_tiles), max_hits=top_k)
        return JobRequest("search", self.source, self.extent, config, query=self.query,
                          model_dir=self.model_dir(parameters, context), output=self.gpkg_path(parameters, context))

    def results(self, outcome) -> dict:  # noqa: D102
        hits = outcome.result.hits
        return {"OUTPUT": str(outcome.output), "N_HITS": len(hits), "BEST_SCORE": hits[0].score if hits else None}


class ClassifyRasterAlgorithm(CaptionRasterAlgorithm):
    """Classify the fine tiles of a raster into the user's classes."""

    def name(self) -> str:  # noqa: D102
        return "classify_raster"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Classify raster tiles")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Classifies every fine tile of a raster (the DRIS leaves, which cover the extent once) into "
            "a class list, zero-shot: each class name becomes a small prompt ensemble (\"an aerial image "
            "of ...\") in the model's joint space.\n\n"
            "CLASSES: comma-separated names, for example \"forest, farmland, water, buildings\"; empty "
            "uses the knowledge base's scene concepts.\n\n"
            "Output: a GeoPackage layer classes (class, confidence, runner-up, level, depth, ground "
            "sample distance). SCENE is the best class of the whole view."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.addParameter(QgsProcessingParameterString(
            "CLASSES", self.tr("Classes, comma-separated (empty: the knowledge base's scene concepts)"),
            optional=True))
        self.add_extent_parameter()
        self.add_budget_parameter()
        self.add_model_parameter()
        self.add_gpkg_output("Classes")
        self.addOutput(QgsProcessingOutputString("SCENE", self.tr("Best class of the whole view")))
        self.addOutput(QgsProcessingOutputNumber("N_TILES", self.tr("Number of classified tiles")))

    def gather(self, parameters, context, feedback) -> None:  # noqa: D102
        self.classes = self.parameterAsString(parameters, "CLASSES", context) or ""
        names = [c for c in self.classes.split(",") if c.strip()]
        if len(names) == 1:
            raise QgsProcessingException("Give at least two classes, separated by commas, or none for the "
                                         "knowledge base's scene concepts.")
        super().gather(parameters, context, feedback)

    def job_request(self, parameters, context) -> JobRequest:  # noqa: D102
        max_tiles = self.parameterAsInt(parameters, "MAX_TILES", context)
        return JobRequest("classify", self.source, self.extent, JobConfig(plan=PlanConfig(max_tiles=max_tiles)),
                          query=self.classes, model_dir=self.model_dir(parameters, context),
                          output=self.gpkg_path(parameters, context))

    def results(self, outcome) -> dict:  # noqa: D102
        scene = outcome.result.scene
        return {"OUTPUT": str(outcome.output), "SCENE": scene[0][0] if scene else "",
                "N_TILES": len(outcome.result.records)}


class AskRasterAlgorithm(CaptionRasterAlgorithm):
    """Answer a question about a raster, with the evidence tiles as a layer."""

    def name(self) -> str:  # noqa: D102
        return "ask_raster"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Ask a question about a raster")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Answers a question about the area of a raster:\n"
            "- \"is there a storage tank?\": yes or no, against a threshold calibrated on validation data;\n"
            "- \"what is this area?\": the best scene concepts of the whole view;\n"
            "- \"where is the river?\": the best places;\n"
            "- \"how much of the area is forest?\": the share of the fine tiles that look like it.\n\n"
            "Output: ANSWER as text, and a GeoPackage layer evidence with the tiles that support it "
            "(rank, score, caption)."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.addParameter(QgsProcessingParameterString("QUESTION", self.tr("Question")))
        self.add_extent_parameter()
        self.add_budget_parameter()
        self.add_model_parameter()
        self.add_gpkg_output("Evidence")
        self.addOutput(QgsProcessingOutputString("ANSWER", self.tr("Answer")))
        self.addOutput(QgsProcessingOutputString("KIND", self.tr("Kind of question")))

    def gather(self, parameters, context, feedback) -> None:  # noqa: D102
        from ...core.qa import parse_question

        self.question = self.parameterAsString(parameters, "QUESTION", context)
        try:
            parse_question(self.question)
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc
        super().gather(parameters, context, feedback)

    def job_request(self, parameters, context) -> JobRequest:  # noqa: D102
        max_tiles = self.parameterAsInt(parameters, "MAX_TILES", context)
        return JobRequest("ask", self.source, self.extent, JobConfig(plan=PlanConfig(max_tiles=max_tiles)),
                          query=self.question, model_dir=self.model_dir(parameters, context),
                          output=self.gpkg_path(parameters, context))

    def results(self, outcome) -> dict:  # noqa: D102
        return {"OUTPUT": str(outcome.output), "ANSWER": outcome.result.answer, "KIND": outcome.result.question.kind}


BATCH_PATTERN = "*.tif;*.tiff;*.jp2;*.img;*.vrt"
"""Default PATTERN of the batch algorithm: the usual raster file extensions, ';'-separated."""
BATCH_MODES = ("merged", "per_input")
"""OUTPUT_MODE values: one merged layer (OUTPUT), or one GeoPackage per input (OUTPUT_FOLDER)."""


def folder_rasters(folder: Path, pattern: str = BATCH_PATTERN) -> list[Path]:
    """The files directly in ``folder`` whose names match one of the patterns, sorted by name.

    Args:
        folder: The folder to list (not its sub-folders).
        pattern: Shell patterns separated by ";" (or ","), matched without regard to case.
    """
    patterns = [p.strip().lower() for p in pattern.replace(",", ";").split(";") if p.strip()]
    matching = [p for p in folder.iterdir() if p.is_file() and any(fnmatch(p.name.lower(), pat) for pat in patterns)]
    return sorted(matching, key=lambda p: p.name.lower())


def file_stem(name: str) -> str:
    """A layer or file name made safe as a file name (letters, digits, "-", "_", ".")."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "raster"


@dataclass
class BatchInput:
    """One raster of a batch, resolved on the main thread.

    Attributes:
        name: The layer's name (a file's name without extension), in messages and the source field.
        source: The raster to read; None when it could not be opened.
        transform: To the merged output's CRS; None when the CRS is the same (or per-input output).
        error: Why the raster could not be opened (a sentence), when source is None.
    """

    name: str
    source: QgsLayerSource | None
    transform: QgsCoordinateTransform | None = None
    error: str = ""


class BatchCaptionAlgorithm(RsVlmAlgorithm):
    """Caption several rasters (layers and/or a folder of files), into one layer or one file each."""

    def name(self) -> str:  # noqa: D102
        return "batch_caption"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Batch caption layers")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Captions many rasters (whole extents): the LAYERS given and the files of FOLDER whose names "
            "match PATTERN (\";\"-separated, default " + BATCH_PATTERN + "). A raster that fails is "
            "reported and skipped; the others go on.\n\n"
            "OUTPUT_MODE:\n"
            "- one merged layer: all captions, at all levels, in one GeoPackage layer named captions "
            "(OUTPUT); the source field names the raster each caption comes from. The layer is in the CRS "
            "of the first raster; captions of rasters in another CRS are reprojected as bounding boxes.\n"
            "- one GeoPackage per input: in OUTPUT_FOLDER, named after each raster (with _2, _3... rather "
            "than overwrite a file), with the layers captions_global, captions_region and captions_object "
            "in the raster's CRS. Files already written stay when the run is cancelled.\n\n"
            "Outputs: N_CAPTIONED, N_FAILED and FILES, the GeoPackages written."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "LAYERS", self.tr("Raster layers"), QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "FOLDER", self.tr("Folder of raster files"), behavior=QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterString(
            "PATTERN", self.tr("File name patterns in the folder (;-separated)"), BATCH_PATTERN, optional=True))
        self.add_budget_parameter()
        self.add_model_parameter()
        self.addParameter(QgsProcessingParameterEnum(
            "OUTPUT_MODE", self.tr("Output"),
            [self.tr("One merged layer with a source field (OUTPUT)"),
             self.tr("One GeoPackage per input (OUTPUT_FOLDER)")], defaultValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", self.tr("Captions (merged layer)"), GPKG_FILTER, optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination(
            "OUTPUT_FOLDER", self.tr("Folder of GeoPackages (one per input)"), optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("N_CAPTIONED", self.tr("Number of rasters captioned")))
        self.addOutput(QgsProcessingOutputNumber("N_FAILED", self.tr("Number of rasters that failed")))
        self.addOutput(QgsProcessingOutputMultipleLayers("FILES", self.tr("GeoPackages written")))

    def gather(self, parameters, context, feedback) -> None:  # noqa: D102
        self.mode = BATCH_MODES[self.parameterAsEnum(parameters, "OUTPUT_MODE", context)]
        layers = self.parameterAsLayerList(parameters, "LAYERS", context) if parameters.get("LAYERS") else []
        files = self.folder_files(parameters, context)
        if not layers and not files:
            raise QgsProcessingException("No rasters were given; choose raster layers (LAYERS) or a folder of "
                                         "raster files (FOLDER).")
        self.inputs: list[BatchInput] = []
        self.crs = None
        for layer in layers:
            self.inputs.append(self.batch_input(layer, context))
        for path in files:
            layer = QgsRasterLayer(str(path), path.stem, "gdal")
            if layer.isValid():
                self.inputs.append(self.batch_input(layer, context))
            else:
                self.inputs.append(BatchInput(path.stem, None, error=(
                    f"{path.name} is not a raster QGIS can read; check the file, or remove it from the folder "
                    "or from PATTERN.")))

    def folder_files(self, parameters, context) -> list[Path]:
        """The files of FOLDER that match PATTERN (none without FOLDER)."""
        folder = self.parameterAsFile(parameters, "FOLDER", context) if parameters.get("FOLDER") else ""
        if not folder:
            return []
        if not Path(folder).is_dir():
            raise QgsProcessingException(f"The folder {folder} does not exist; choose a folder of raster files.")
        pattern = (self.parameterAsString(parameters, "PATTERN", context) or "").strip() or BATCH_PATTERN
        files = folder_rasters(Path(folder), pattern)
        if not files:
            raise QgsProcessingException(f"No file in {folder} matches {pattern}; choose another folder or "
                                         "change PATTERN (for example *.tif;*.png).")
        return files

    def batch_input(self, layer, context) -> BatchInput:
        """One layer as a batch input, with its transform to the merged layer's CRS (main thread)."""
        try:
            source = QgsLayerSource(layer)
        except RsVlmError as exc:
            return BatchInput(layer.name(), None, error=str(exc))
        if self.mode != "merged":
            return BatchInput(layer.name(), source)
        if self.crs is None:
            self.crs = layer.crs()
        transform = None
        if layer.crs().isValid() and self.crs.isValid() and layer.crs() != self.crs:
            transform = QgsCoordinateTransform(layer.crs(), self.crs, context.transformContext())
        return BatchInput(layer.name(), source, transform)

    def output_folder(self, parameters, context) -> Path:
        """OUTPUT_FOLDER, created and writable (per-input mode)."""
        given = parameters.get("OUTPUT_FOLDER")
        folder = self.parameterAsFileOutput(parameters, "OUTPUT_FOLDER", context) if given else ""
        if not folder:
            raise QgsProcessingException("Choose a folder for the GeoPackages (OUTPUT_FOLDER), or choose one "
                                         "merged layer as the output.")
        try:
            return ensure_writable_folder(Path(folder))
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def merged_output(self, parameters, context) -> Path:
        """OUTPUT as a GeoPackage path (merged mode)."""
        if not self.parameterAsFileOutput(parameters, "OUTPUT", context):
            raise QgsProcessingException("Choose a GeoPackage for the merged captions (OUTPUT), or choose one "
                                         "GeoPackage per input and an output folder.")
        return self.gpkg_path(parameters, context)

    def process(self, parameters, context, feedback) -> dict:  # noqa: D102
        progress = FeedbackProgress(feedback)
        config = JobConfig(plan=PlanConfig(max_tiles=self.parameterAsInt(parameters, "MAX_TILES", context)))
        model = self.model_dir(parameters, context)
        merged = self.mode == "merged"
        output = self.merged_output(parameters, context) if merged else None
        folder = None if merged else self.output_folder(parameters, context)
        records: list[CaptionRecord] = []
        files: list[str] = []
        failed = 0
        n = len(self.inputs)
        for index, item in enumerate(self.inputs):
            if feedback.isCanceled():
                feedback.pushInfo(CANCELLED if merged else f"Cancelled; {len(files)} GeoPackages were written.")
                return {}
            label = f"Captioning {index + 1} of {n}: {item.name}"
            feedback.setProgressText(label)
            feedback.pushInfo(label)
            if item.source is None:
                feedback.reportError(f"{item.name}: {item.error}", False)
                failed += 1
                continue
            sub = SubProgress(progress, index / n, (index + 1) / n, prefix=f"{label}: ")
            try:
                outcome = execute(JobRequest("describe", item.source, None, config, model_dir=model), sub)
                captions = [replace(record, source=item.name) for record in outcome.result.records]
                if merged:
                    records.extend(self._in_output_crs(record, item.transform) for record in captions)
                else:
                    files.append(str(self._write_one(folder, item.name, outcome.result, captions)))
            except CancelledError:
                feedback.pushInfo(CANCELLED if merged else f"Cancelled; {len(files)} GeoPackages were written.")
                return {}
            except (RsVlmError, QgsProcessingException) as exc:
                feedback.reportError(f"{item.name}: {exc}", False)
                failed += 1
            except Exception as exc:  # noqa: BLE001 - one bad raster must not stop the batch
                feedback.pushDebugInfo(traceback.format_exc())
                feedback.reportError(f"{item.name}: could not be captioned ({type(exc).__name__}: {exc}); "
                                     "check that the file opens in QGIS. The other rasters go on.", False)
                failed += 1
        if failed == n:
            raise QgsProcessingException(
                f"None of the {n} rasters could be captioned; see the errors above and fix them first.")
        results = {"N_CAPTIONED": n - failed, "N_FAILED": failed}
        if merged:
            crs_wkt = self.crs.toWkt() if self.crs is not None and self.crs.isValid() else None
            try:
                written = write_geopackage(output, {BATCH_LAYER: records}, crs_wkt, kinds={BATCH_LAYER: CaptionRecord})
            except RsVlmError as exc:
                raise QgsProcessingException(str(exc)) from exc
            self.load_on_completion(context, written, [BATCH_LAYER])
            files = [str(written)]
            results["OUTPUT"] = str(written)
        else:
            results["OUTPUT_FOLDER"] = str(folder)
        feedback.setProgress(100)
        feedback.pushInfo(f"Captioned {n - failed} of {n} rasters; wrote " + ", ".join(files))
        results["FILES"] = files
        return results

    @staticmethod
    def _write_one(folder: Path, name: str, result, captions: list[CaptionRecord]) -> Path:
        """One input's captions as ``folder/<name>.gpkg`` (``<name>_2.gpkg``... when taken), never overwriting."""
        layers = result_layers(replace(result, records=captions))
        return write_geopackage(unique_path(folder, file_stem(name)), layers, result.crs_wkt, overwrite=False,
                                kinds=result_kinds(result))

    @staticmethod
    def _in_output_crs(record: CaptionRecord, transform) -> CaptionRecord:
        if transform is None:
            return record
        e = record.extent
        try:
            box = transform.transformBoundingBox(QgsRectangle(e.xmin, e.ymin, e.xmax, e.ymax))
        except QgsCsException as exc:
            raise QgsProcessingException(
                f"A caption of {record.source} cannot be reprojected to the output CRS ({exc}); "
                "caption rasters of that CRS separately.") from exc
        return replace(record, extent=to_extent(box))


def default_python() -> str:
    """The interpreter that runs the exporter when PYTHON is empty.

    The project's virtual environment beside the plugin source (``.venv``, made by
    ``build.py``, has torch) when it exists; otherwise this Python when it is a Python
    (inside QGIS ``sys.executable`` may be the QGIS program), else ``python3`` on the PATH.
    """
    root = PLUGIN_ROOT.parent
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.exists():
            return str(candidate)
    if Path(sys.executable).name.lower().startswith("python"):
        return sys.executable
    return shutil.which("python3") or shutil.which("python") or sys.executable


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
            "WEIGHTS: trained head weights (.npz); empty uses the plugin's."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterString(
            "PYTHON", self.tr("Python interpreter with torch (default: see help)"), optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "WEIGHTS", self.tr("Head weights (.npz, default: the plugin's)"), extension="npz", optional=True))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", self.tr("Model bundle folder")))

    def process(self, parameters, context, feedback) -> dict:  # noqa: D102
        python = (self.parameterAsString(parameters, "PYTHON", context) or "").strip() or default_python()
        if not (Path(python).exists() or shutil.which(python)):
            raise QgsProcessingException(
                f"The Python interpreter {python} does not exist; give the path of a Python that has torch.")
        folder = Path(self.parameterAsFileOutput(parameters, "OUTPUT_FOLDER", context))
        folder.mkdir(parents=True, exist_ok=True)
        command = [python, "-m", "rs_vlm_plugin.modeling.export", "--out", str(folder)]
        weights = self.parameterAsFile(parameters, "WEIGHTS", context) if "WEIGHTS" in parameters else ""
        if weights:
            command += ["--weights", weights]
        feedback.pushCommandInfo(" ".join(command))
        code, lines = run_streaming(command, feedback, cwd=PLUGIN_ROOT.parent)
        if code is None:
            feedback.pushInfo("Cancelled; the export was stopped.")
            return {}
        if code != 0:
            raise QgsProcessingException(export_error(python, code, lines))
        if not (folder / "manifest.json").exists():
            raise QgsProcessingException(
                f"The exporter finished but wrote no manifest.json in {folder}; see the log above.")
        feedback.setProgress(100)
        return {"OUTPUT_FOLDER": str(folder)}


def export_error(python: str, code: int, lines: list[str]) -> str:
    """The sentence for a failed export, from its exit code and last lines of output."""
    text = "\n".join(lines)
    if "No module named 'torch'" in text or 'No module named "torch"' in text:
        return (f"The Python interpreter {python} has no torch, which the export needs; install it there "
                f"(\"{python} -m pip install torch\") or give an interpreter that has torch as PYTHON.")
    if "No module named 'rs_vlm_plugin" in text:
        return (f"The Python interpreter {python} cannot import rs_vlm_plugin from {PLUGIN_ROOT.parent}; "
                "give an interpreter of Python 3.10 or newer with numpy and torch as PYTHON.")
    last = next((line for line in reversed(lines) if line.strip()), "no output")
    return f"The model export failed (exit code {code}): {last.strip()} See the log above for the details."


def run_streaming(command: list[str], feedback: QgsProcessingFeedback, cwd: Path,
                  poll_s: float = 0.1) -> tuple[int | None, list[str]]:
    """Run a child process, streaming its output to ``feedback``; kill it on cancel.

    Lines "PROGRESS <0-100>" set the progress bar; other lines are logged.

    Returns:
        ``(exit code, output lines)``; the exit code is None when the user cancelled.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(cwd)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    try:
        child = subprocess.Popen(command, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", bufsize=1)
    except OSError as exc:
        raise QgsProcessingException(f"Could not start {command[0]} ({exc}); check the PYTHON parameter.") from exc
    lines: list[str] = []
    pending: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            pending.put(line.rstrip("\r\n"))
        pending.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    finished_reading = False
    while not finished_reading:
        if feedback.isCanceled():
            child.kill()
            child.wait()
            return None, lines
        try:
            line = pending.get(timeout=poll_s)
        except queue.Empty:
            continue
        if line is None:
            finished_reading = True
            continue
        lines.append(line)
        progress = _progress_value(line)
        if progress is not None:
            feedback.setProgress(progress)
        elif line.strip():
            feedback.pushConsoleInfo(line)
    return child.wait(), lines


def _progress_value(line: str) -> float | None:
    parts = line.split()
    if len(parts) == 2 and parts[0] == "PROGRESS":
        try:
            return max(0.0, min(100.0, float(parts[1])))
        except ValueError:
            return None
    return None


def all_algorithms() -> list[QgsProcessingAlgorithm]:
    """One instance of each RS-VLM algorithm."""
    return [CaptionRasterAlgorithm(), SearchRasterAlgorithm(), ClassifyRasterAlgorithm(), AskRasterAlgorithm(),
            BatchCaptionAlgorithm(), ExportModelAlgorithm()]
