"""The batch captioning algorithm: many rasters (layers or a folder of files), one merged layer or one
GeoPackage per input; a failure on one input is reported and the others go on."""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from qgis.core import (
    QgsCoordinateTransform,
    QgsCsException,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterString,
    QgsRasterLayer,
    QgsRectangle,
)

from ...core.distributed.inputs import BATCH_PATTERN, folder_rasters
from ...core.planning.dris import PlanConfig
from ...core.errors import CancelledError, RsVlmError
from ...core.gpkg import write_geopackage
from ...core.jobs.config import JobConfig
from ...core.jobs.results import result_kinds, result_layers
from ...core.progress import SubProgress
from ...core.records import CaptionRecord
from ..extent import to_extent
from ..layers import BATCH_LAYER
from ..outputs import ensure_writable_folder, unique_path
from ..source import QgsLayerSource
from ..task import JobRequest, execute
from .algorithms import RsVlmAlgorithm
from .constants import CANCELLED, GPKG_FILTER
from .feedback import FeedbackProgress


BATCH_MODES = ("merged", "per_input")
"""OUTPUT_MODE values: one merged layer (OUTPUT), or one GeoPackage per input (OUTPUT_FOLDER)."""


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
        path: The layer's file when it is a local file (what Dask workers can open), else None.
    """

    name: str
    source: QgsLayerSource | None
    transform: QgsCoordinateTransform | None = None
    error: str = ""
    path: Path | None = None


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
            "SCHEDULER (optional): a Dask scheduler address (tcp://host:8786, or local:N for N worker "
            "processes here). Raster files are then captioned on the cluster, in chunks, with the same captions "
            "as the command line's batch; layers that are not local files (web, database, memory) stay in this "
            "process, because the workers open the files themselves. Needs dask[distributed] installed.\n\n"
            "Outputs: N_CAPTIONED, N_FAILED and FILES, the GeoPackages written."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            "LAYERS", self.tr("Raster layers"), QgsProcessing.SourceType.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterFile(
            "FOLDER", self.tr("Folder of raster files"), behavior=QgsProcessingParameterFile.Behavior.Folder, optional=True))
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
        self.addParameter(QgsProcessingParameterString(
            "SCHEDULER", self.tr("Dask scheduler address for raster files (tcp://host:8786 or local:N; empty: here)"),
            "", optional=True))
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
        self.scheduler = (self.parameterAsString(parameters, "SCHEDULER", context) or "").strip()
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
            return BatchInput(layer.name(), source, path=local_file(layer))
        if self.crs is None:
            self.crs = layer.crs()
        transform = None
        if layer.crs().isValid() and self.crs.isValid() and layer.crs() != self.crs:
            transform = QgsCoordinateTransform(layer.crs(), self.crs, context.transformContext())
        return BatchInput(layer.name(), source, transform, path=local_file(layer))

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
        try:
            remote = self._on_cluster(config, model, progress, feedback) if self.scheduler else {}
        except CancelledError:
            feedback.pushInfo(CANCELLED)
            return {}
        except RsVlmError as exc:
            raise QgsProcessingException(str(exc)) from exc
        for index, item in enumerate(self.inputs):
            if index in remote:
                captions, error = remote[index]
                if error:
                    feedback.reportError(f"{item.name}: {error}", False)
                    failed += 1
                elif merged:
                    records.extend(self._in_output_crs(record, item.transform) for record in captions)
                else:
                    files.append(str(self._write_one(folder, item.name, self._cluster_result(item), captions)))
                continue
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

    def _on_cluster(self, config, model, progress, feedback) -> dict[int, tuple[list[CaptionRecord], str]]:
        """Caption the inputs that are local files on the Dask cluster: ``{input: (captions, error)}``."""
        from ...core.distributed.jobs import LOCAL_ONLY, caption_files

        chosen = []
        for index, item in enumerate(self.inputs):
            path = item.path if item.source is not None else None
            if path is None:
                if item.source is not None:
                    feedback.pushInfo(LOCAL_ONLY.format(name=item.name))
                continue
            chosen.append((index, path))
        if not chosen:
            return {}
        feedback.pushInfo(f"Captioning {len(chosen)} raster files on the Dask cluster {self.scheduler}.")
        outcome = caption_files(self.scheduler, [(path, self.inputs[i].name) for i, path in chosen], config.plan,
                                model, SubProgress(progress, 0.0, 0.9))
        self._crs_of = {}
        out = {}
        for k, (index, _) in enumerate(chosen):
            done = outcome.outcomes.get(k)
            if done is not None:
                self._crs_of[index] = done.crs_wkt
            out[index] = (done.records if done else [], outcome.failures.get(k, ""))
        return out

    def _cluster_result(self, item):
        """A describe-like result for one input captioned on the cluster (per-input output)."""
        from ...core.jobs.results import DescribeResult

        crs = self._crs_of.get(self.inputs.index(item))
        return DescribeResult([], None, crs, [])

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


def local_file(layer) -> Path | None:
    """The file behind a GDAL raster layer, or None for web, database and memory layers."""
    if layer is None or layer.providerType() != "gdal":
        return None
    path = Path(layer.source().split("|")[0])
    return path if path.is_file() else None


def batch_algorithms() -> list:
    """The batch algorithm."""
    return [BatchCaptionAlgorithm()]
