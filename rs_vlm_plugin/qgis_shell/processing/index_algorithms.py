"""Processing algorithms of the embedding index: build it once, search it any number of times.

"Build embedding index" encodes a raster into an index GeoPackage (tile footprints and their
embeddings, :mod:`core.index`); "Search embedding index" answers a text from that file alone,
in milliseconds, without reading the raster again.
"""

from __future__ import annotations

from dataclasses import replace

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ...core.distributed.jobs import LOCAL_ONLY
from ...core.errors import CancelledError, RsVlmError
from ...core.gpkg import write_geopackage
from ...core.jobs.index import TILES_LAYER
from ...core.jobs.query import check_query
from ...core.jobs.results import SEARCH_LAYER, result_kinds, result_layers
from ..source import layer_source_id
from ..task import JobRequest, load_bundle, open_index
from .algorithms import CaptionRasterAlgorithm, RsVlmAlgorithm
from .batch_algorithm import local_file
from .constants import CANCELLED
from .feedback import FeedbackProgress


class BuildIndexAlgorithm(CaptionRasterAlgorithm):
    """Encode a raster once into an embedding index for repeated text search."""

    def name(self) -> str:  # noqa: D102
        return "build_index"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Build embedding index")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Encodes a raster once (DRIS tiles, or the budget you give) and stores each tile's footprint and "
            "its embeddings (the global token and the 13 region tokens) in one GeoPackage. \"Search embedding "
            "index\" then answers any number of texts from that file in milliseconds, without reading the "
            "raster again.\n\n"
            "Output: a GeoPackage with the layer index_tiles (tile_id, tile_key, level, depth, gsd_m, "
            "complexity), which QGIS shows like any polygon layer, and two tables with the embeddings and "
            "the index's metadata (model, source, CRS, plan). An index answers only with the model it was "
            "built with; re-exporting the model means building the index again.\n\n"
            "GUIDE (optional): a text that guides the tiles (refined where it scores, down to the raster's "
            "native resolution); empty: the plan by image complexity, which serves any query alike.\n\n"
            "SCHEDULER (optional): a Dask scheduler address (tcp://host:8786, or local:N for N worker processes "
            "here): the raster is planned once and encoded in chunks on the cluster, giving the same index. Only "
            "for local raster files: the workers open the file themselves, so a web, database or memory layer "
            "stays in this process. Needs dask[distributed] installed."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.add_raster_job_parameters("Embedding index")
        self.add_guide_parameter()
        self.addParameter(QgsProcessingParameterString(
            "SCHEDULER", self.tr("Dask scheduler address (tcp://host:8786 or local:N; empty: here)"), "",
            optional=True))
        self.addOutput(QgsProcessingOutputNumber("N_TILES", self.tr("Number of indexed tiles")))

    def gather(self, parameters, context, feedback) -> None:  # noqa: D102
        super().gather(parameters, context, feedback)
        self.source_id = layer_source_id(self.layer)  # the same identity the panel looks indexes up by
        self.scheduler = (self.parameterAsString(parameters, "SCHEDULER", context) or "").strip()
        self.file = local_file(self.layer)
        if self.scheduler and self.file is None:
            feedback.pushInfo(LOCAL_ONLY.format(name=self.layer.name()))

    def process(self, parameters, context, feedback) -> dict:  # noqa: D102
        if not (self.scheduler and self.file is not None):
            return super().process(parameters, context, feedback)
        from ...core.distributed.jobs import index_file

        request = self.job_request(parameters, context)
        feedback.pushInfo(f"Building the index on the Dask cluster {self.scheduler}.")
        try:
            path, n_tiles = index_file(self.scheduler, self.file, self.layer.name(), request.index_path,
                                       request.config.plan, request.model_dir, FeedbackProgress(feedback),
                                       self.source_id, request.extent)
        except CancelledError:
            feedback.pushInfo(CANCELLED)
            return {}
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc
        self.load_on_completion(context, path, [TILES_LAYER])
        return {"OUTPUT": str(path), "N_TILES": n_tiles}

    def job_request(self, parameters, context) -> JobRequest:  # noqa: D102
        request = super().job_request(parameters, context)
        return replace(request, kind="index", output=None, index_path=self.gpkg_path(parameters, context),
                       source_id=self.source_id)

    def load_outputs(self, context, outcome) -> None:  # noqa: D102
        self.load_on_completion(context, outcome.result.path, [TILES_LAYER])

    def results(self, outcome) -> dict:  # noqa: D102
        return {"OUTPUT": str(outcome.result.path), "N_TILES": outcome.result.n_tiles}


class SearchIndexAlgorithm(RsVlmAlgorithm):
    """Rank the tiles of an embedding index by similarity to a text, without the raster."""

    def name(self) -> str:  # noqa: D102
        return "search_index"

    def displayName(self) -> str:  # noqa: D102, N802
        return self.tr("Search embedding index")

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return self.tr(
            "Finds the tiles of an embedding index (written by \"Build embedding index\") that match a text, "
            "best first, ranked exactly as \"Search raster by text\" ranks the same tiles: the best cosine "
            "similarity of the text with the tile's global token and 13 region tokens. The raster is not read, "
            "so a search takes milliseconds.\n\n"
            "Output: a GeoPackage layer search_hits (query, rank, score, level, ground sample distance, a "
            "caption composed from the knowledge base). MODEL must be the model the index was built with "
            "(default: the plugin's model)."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterFile(
            "INDEX", self.tr("Embedding index (.gpkg)"), behavior=QgsProcessingParameterFile.Behavior.File, extension="gpkg"))
        self.addParameter(QgsProcessingParameterString("QUERY", self.tr("Search text")))
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_HITS", self.tr("Number of hits to keep"), QgsProcessingParameterNumber.Type.Integer, 10, False, 1, 1000))
        self.add_model_parameter()
        self.add_gpkg_output("Search hits")
        self.addOutput(QgsProcessingOutputNumber("N_HITS", self.tr("Number of hits")))
        self.addOutput(QgsProcessingOutputNumber("BEST_SCORE", self.tr("Best score")))

    def gather(self, parameters, context, feedback) -> None:  # noqa: D102
        try:
            self.query = check_query(self.parameterAsString(parameters, "QUERY", context))
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc

    def process(self, parameters, context, feedback) -> dict:  # noqa: D102
        output = self.gpkg_path(parameters, context)
        index_path = self.parameterAsFile(parameters, "INDEX", context)
        max_hits = self.parameterAsInt(parameters, "MAX_HITS", context)
        try:
            index = open_index(index_path)
            bundle = load_bundle(self.model_dir(parameters, context))
            result = index.search(bundle, self.query, max_hits=max_hits)
            written = write_geopackage(output, result_layers(result), result.crs_wkt, kinds=result_kinds(result))
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc
        t = result.timings
        feedback.pushInfo(f"Searched {len(index)} tiles: text {1000 * t['text_s']:.1f} ms, "
                          f"scoring {1000 * t['score_s']:.1f} ms.")
        feedback.setProgress(100)
        self.load_on_completion(context, written, [SEARCH_LAYER], self.query)
        hits = result.hits
        return {"OUTPUT": str(written), "N_HITS": len(hits), "BEST_SCORE": hits[0].score if hits else None}


def index_algorithms() -> list[RsVlmAlgorithm]:
    """One instance of each index algorithm."""
    return [BuildIndexAlgorithm(), SearchIndexAlgorithm()]
