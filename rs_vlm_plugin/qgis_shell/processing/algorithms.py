"""The RS-VLM Processing algorithms.

Layers are resolved and their providers cloned in ``prepareAlgorithm`` (main thread); the
heavy work runs in ``processAlgorithm`` (a worker thread in the GUI) through the same job
runner as the panel (:func:`..task.execute`), reporting to Processing feedback.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsProviderRegistry,
)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ...core.planning.dris import PlanConfig
from ...core.errors import CancelledError, RsVlmError
from ...core.geometry import Extent
from ...core.jobs.classify import split_classes
from ...core.jobs.config import JobConfig
from ...core.jobs.query import check_query
from ...core.jobs.results import SearchResult
from ...core.validation import check_output, model_files
from ..extent import to_extent
from ..layers import display_name, style_layer
from ..settings import default_model_dir
from ..source import QgsLayerSource
from ..task import JobRequest, execute
from .answer_parameters import ANSWERS_HELP, add_answer_parameters, answer_options
from .constants import CANCELLED, GPKG_FILTER, ICON_PATH, MAX_TILE_BUDGET
from .feedback import FeedbackProgress


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
            QgsProcessingParameterNumber.Type.Integer, PlanConfig().max_tiles, False, 1, MAX_TILE_BUDGET)
        self.addParameter(param)

    def add_guide_parameter(self) -> None:
        """GUIDE: optional text that guides the plan (refined down to native resolution where it scores)."""
        self.addParameter(QgsProcessingParameterString(
            "GUIDE", self.tr("Guide the tiles by this text (optional; default: by image complexity)"), "", False, True))

    def add_outlines_parameter(self) -> None:
        """OUTLINES: also outline what was found (a layer beside the tiles)."""
        self.addParameter(QgsProcessingParameterBoolean(
            "OUTLINES", self.tr("Outline what is found (boxes and polygons beside the tiles)"), True))

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
            behavior=QgsProcessingParameterFile.Behavior.Folder, optional=True))

    def add_raster_job_parameters(self, output_description: str) -> None:
        """INPUT (a raster), EXTENT, MAX_TILES, MODEL and the GeoPackage OUTPUT."""
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.add_extent_parameter()
        self.add_budget_parameter()
        self.add_model_parameter()
        self.add_gpkg_output(output_description)

    def add_gpkg_output(self, description: str) -> None:
        """OUTPUT: the GeoPackage to write."""
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", self.tr(description), GPKG_FILTER))

    # Values -------------------------------------------------------------------------------

    def model_dir(self, parameters, context) -> Path:
        """The bundle folder: MODEL, or the default model (the plugin's own or the installed one)."""
        folder = self.parameterAsFile(parameters, "MODEL", context) if "MODEL" in parameters else ""
        return Path(folder) if folder else default_model_dir()

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
        """OUTPUT as a path: a GeoPackage in a writable folder that is none of the files the algorithm
        reads (see :func:`validation.check_output`); an existing one is replaced, as Processing does."""
        path = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        inputs = [*self.input_files(parameters, context), *model_files(self.model_dir(parameters, context))]
        try:
            return check_output(path, inputs, overwrite=True)
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def input_files(self, parameters, context) -> list[Path]:
        """The files the algorithm reads: its raster layer's file and an INDEX parameter's file."""
        files = []
        layer = getattr(self, "layer", None)
        if layer is not None:
            decoded = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
            files.append(decoded.get("path") or "")
        if "INDEX" in parameters:
            files.append(self.parameterAsFile(parameters, "INDEX", context))
        return [Path(f) for f in files if f and Path(f).exists()]

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
            "\"python3 build.py setup\").\n\n"
            "GUIDE (optional): a text, for example \"storage tanks\", that guides the tiles: DRIS then reads "
            "coarse first and refines where the text scores, down to the raster's native resolution, instead "
            "of where the image is busy. Empty: the plan by image complexity."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.add_raster_job_parameters("Captions")
        self.add_guide_parameter()
        self.addOutput(QgsProcessingOutputString("GLOBAL_CAPTION", self.tr("Global caption")))
        self.addOutput(QgsProcessingOutputNumber("N_TILES", self.tr("Number of DRIS tiles")))

    def gather(self, parameters, context, feedback) -> None:  # noqa: D102
        self.source, self.layer = self.raster_source(parameters, context)
        self.extent = self.job_extent(parameters, context, self.source, self.layer.crs())

    def job_request(self, parameters, context) -> JobRequest:
        """The job of this run."""
        max_tiles = self.parameterAsInt(parameters, "MAX_TILES", context)
        config = JobConfig(plan=PlanConfig(max_tiles=max_tiles),
                           guide_query=(self.parameterAsString(parameters, "GUIDE", context) or "").strip())
        return JobRequest("describe", self.source, self.extent, config,
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
            "or \"storage tanks next to a river\". The raster is tiled with text-guided DRIS (read coarse "
            "first, refined where the text scores, down to the raster's native resolution), each tile is "
            "compared with the text in the model's joint space, and the best TOP_K tiles are written, best "
            "first.\n\n"
            "Output: a GeoPackage layer search_hits (query, rank, score = cosine similarity, level, "
            "ground sample distance, the tile's caption). BEST_SCORE is the first hit's score.\n\n"
            "OUTLINES (on by default): also draw what was found inside the finest tiles, in the layer "
            "search_outlines (query, rank, score, shape: box or polygon, area in m², found_by, tile)."
        ) + "\n\n" + self.tr(ANSWERS_HELP)

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.addParameter(QgsProcessingParameterString("QUERY", self.tr("Search text")))
        self.add_extent_parameter()
        self.add_budget_parameter()
        self.addParameter(QgsProcessingParameterNumber(
            "TOP_K", self.tr("Number of hits to keep"), QgsProcessingParameterNumber.Type.Integer, 10, False, 1, 1000))
        self.add_outlines_parameter()
        add_answer_parameters(self)
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
        config = JobConfig(plan=PlanConfig(max_tiles=max_tiles), max_hits=top_k,
                           outlines=self.parameterAsBool(parameters, "OUTLINES", context),
                           **answer_options(self, parameters, context))
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
        try:
            names = split_classes(self.classes) or []
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc
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
            "(rank, score, caption).\n\n"
            "OUTLINES (on by default): a \"where is X?\" question also draws X inside the finest tiles, "
            "in the layer evidence_outlines (boxes and polygons with a score each)."
        ) + "\n\n" + self.tr(ANSWERS_HELP)

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", self.tr("Raster layer")))
        self.addParameter(QgsProcessingParameterString("QUESTION", self.tr("Question")))
        self.add_extent_parameter()
        self.add_budget_parameter()
        self.add_outlines_parameter()
        add_answer_parameters(self)
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
        config = JobConfig(plan=PlanConfig(max_tiles=max_tiles),
                           outlines=self.parameterAsBool(parameters, "OUTLINES", context),
                           **answer_options(self, parameters, context))
        return JobRequest("ask", self.source, self.extent, config,
                          query=self.question, model_dir=self.model_dir(parameters, context),
                          output=self.gpkg_path(parameters, context))

    def results(self, outcome) -> dict:  # noqa: D102
        return {"OUTPUT": str(outcome.output), "ANSWER": outcome.result.answer, "KIND": outcome.result.question.kind}


def all_algorithms() -> list[QgsProcessingAlgorithm]:
    """One instance of each RS-VLM algorithm of this module."""
    return [CaptionRasterAlgorithm(), SearchRasterAlgorithm(), ClassifyRasterAlgorithm(), AskRasterAlgorithm()]
