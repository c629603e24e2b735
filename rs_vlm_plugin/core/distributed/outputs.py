"""What the writer makes of finished tasks: a raster's caption records or index rows, assembled in
plan order, then one GeoPackage (merged captions) or one index of all rasters.

Assembly runs in the client: it ranks a raster's tiles against the knowledge base all at once,
as :func:`jobs.captioning.caption_tiles` does in a single-process run, so scores are the same to the bit.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..bundle import ModelBundle
from ..errors import RsVlmError
from ..geometry import Extent
from ..gpkg import write_geopackage
from ..jobs.index import index_meta, index_tables, write_index
from ..encoding.tiles import Encoding, no_valid_pixels
from ..jobs.captioning import caption_tiles
from ..progress import ProgressBackend, check_canceled
from ..records import CaptionRecord, IndexTile
from .tasks import ChunkResult, RasterJob, RasterPlan

BATCH_LAYER = "captions"
"""The merged layer of a batch (the Processing algorithm's name for it too)."""


@dataclass
class RasterOutcome:
    """One finished raster.

    Attributes:
        records: Its caption records (describe), sorted as :func:`jobs.captioning.caption_tiles` sorts them.
        tiles, arrays, meta: Its index rows, arrays and metadata (index).
    """

    name: str
    crs_wkt: str | None
    warnings: list[str]
    n_tiles: int
    records: list[CaptionRecord] = field(default_factory=list)
    tiles: list[IndexTile] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def assemble(job: RasterJob, plan: RasterPlan, chunks: list[ChunkResult], bundle: ModelBundle,
             progress: ProgressBackend) -> RasterOutcome:
    """A raster's outcome from its plan and all its chunk results (in any order).

    Raises:
        RsVlmError: No tile had a valid pixel.
    """
    chunks = sorted(chunks, key=lambda c: c.first)
    rows = [row for c in chunks for row in c.rows]
    encoded = [plan.tiles[r] for r in rows]
    warnings = list(dict.fromkeys(plan.warnings + [w for c in chunks for w in c.warnings]))
    if all("global" in t.levels for t in encoded):
        raise no_valid_pixels(SimpleNamespace(name=plan.name))
    if len(encoded) < len(plan.tiles):
        progress.info(f"{len(plan.tiles) - len(encoded)} of {len(plan.tiles)} tiles of {plan.name} have no valid "
                      "pixels (nodata); they were skipped.")
    tiers = {k: np.concatenate([c.tiers[k] for c in chunks]) for k in chunks[0].tiers}
    outcome = RasterOutcome(plan.name, plan.crs_wkt, warnings, len(encoded))
    if job.kind == "describe":
        decoded = None if any(c.captions is None for c in chunks) else [s for c in chunks for s in c.captions]
        encoding = Encoding(plan.plan, encoded, tiers["embedding"], {}, tiers)
        outcome.records = caption_tiles(encoding, bundle, job.top_concepts, plan.name, decoded=decoded)
    else:
        outcome.tiles, outcome.arrays = index_tables(encoded, tiers, "float16")
        outcome.meta = index_meta(bundle, plan.name, plan.source_id, plan.crs_wkt, plan.metres_per_unit, plan.plan,
                                  len(outcome.tiles), "float16", warnings, {})
    return outcome


# Writing -------------------------------------------------------------------------------------


def same_crs(a: str | None, b: str | None) -> bool:
    """Whether two CRS WKTs name the same CRS (both missing counts as the same)."""
    if not a or not b:
        return not a and not b
    if a == b:
        return True
    from rasterio.crs import CRS

    return CRS.from_wkt(a) == CRS.from_wkt(b)


def in_crs(records: list[CaptionRecord], src_wkt: str | None, dst_wkt: str | None, name: str) -> list[CaptionRecord]:
    """Records reprojected to another CRS as bounding boxes (unchanged in the same CRS).

    Raises:
        RsVlmError: One of the two has no CRS.
    """
    if same_crs(src_wkt, dst_wkt):
        return records
    if not src_wkt or not dst_wkt:
        raise RsVlmError(f"{name} has {'no CRS' if not src_wkt else 'a CRS'} while the first raster has "
                         f"{'none' if not dst_wkt else 'one'}, so its captions cannot be merged; caption it separately.")
    from dataclasses import replace

    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    src, dst = CRS.from_wkt(src_wkt), CRS.from_wkt(dst_wkt)
    out = []
    for record in records:
        e = record.extent
        box = transform_bounds(src, dst, e.xmin, e.ymin, e.xmax, e.ymax, densify_pts=21)
        out.append(replace(record, extent=Extent(*box)))
    return out


def write_captions(output: Path, outcomes: list[RasterOutcome], progress: ProgressBackend,
                   failures: dict[str, str]) -> Path:
    """All rasters' captions, in input order, as one layer in the CRS of the first (atomic write).

    A raster that cannot be merged (a CRS against none) joins ``failures``.
    """
    crs = outcomes[0].crs_wkt
    records: list[CaptionRecord] = []
    for outcome in outcomes:
        try:
            records += in_crs(outcome.records, outcome.crs_wkt, crs, outcome.name)
        except RsVlmError as exc:
            failures[outcome.name] = str(exc)
    progress.set_stage(f"Writing {len(records):,} captions")
    return write_geopackage(output, {BATCH_LAYER: records}, crs, kinds={BATCH_LAYER: CaptionRecord},
                            finish=lambda _: check_canceled(progress))


def write_archive_index(output: Path, outcomes: list[RasterOutcome], progress: ProgressBackend, start: float,
                        failures: dict[str, str]) -> Path:
    """One index of all rasters (in input order). One raster gives exactly :func:`index.build_index`'s
    index; several get a ``source`` column (each tile's row of ``meta["sources"]``). Rasters in
    another CRS than the first join ``failures``."""
    first = outcomes[0]
    kept = []
    for outcome in outcomes:
        if same_crs(outcome.crs_wkt, first.crs_wkt):
            kept.append(outcome)
        else:
            failures[outcome.name] = (f"{outcome.name} is in another CRS than {first.name}, the first raster; an index "
                                      "holds one CRS, so index rasters of each CRS separately.")
    if len(kept) == 1:
        return write_index(output, first.tiles, first.arrays, dict(first.meta), progress, start)
    tiles, arrays = [], {}
    for j, outcome in enumerate(kept):
        tiles += [IndexTile(len(tiles) + k, t.key, t.level, t.depth, t.extent, t.gsd_m, t.complexity)
                  for k, t in enumerate(outcome.tiles)]
    for name in first.arrays:
        arrays[name] = np.concatenate([o.arrays[name] for o in kept])
    arrays["source"] = np.concatenate([np.full(len(o.tiles), j, np.int32) for j, o in enumerate(kept)])
    meta = dict(first.meta)
    boxes = np.array([o.meta["extent"] for o in kept], np.float64)
    meta.update(
        source_name=f"{len(kept)} rasters", tiles=len(tiles),
        source_id="archive:" + hashlib.sha256("\n".join(o.meta["source_id"] for o in kept).encode()).hexdigest(),
        extent=[float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())],
        native_gsd=min(float(o.meta["native_gsd"]) for o in kept),
        warnings=[f"{o.name}: {w}" for o in kept for w in o.warnings],
        sources=[{k: o.meta[k] for k in ("source_name", "source_id", "extent", "native_gsd", "plan_summary", "tiles")}
                 | {"name": o.name} for o in kept])
    return write_index(output, tiles, arrays, meta, progress, start)


# Parts of an interrupted run (see manifest) -----------------------------------------------------


def outcome_bytes(outcome: RasterOutcome) -> bytes:
    """An outcome as an .npz (JSON for records and metadata, arrays as they are; no pickles)."""
    head = {"name": outcome.name, "crs_wkt": outcome.crs_wkt, "warnings": outcome.warnings,
            "n_tiles": outcome.n_tiles, "meta": outcome.meta,
            "records": [_plain(asdict(r)) for r in outcome.records],
            "tiles": [_plain(asdict(t)) for t in outcome.tiles]}
    buffer = io.BytesIO()
    np.savez(buffer, __json__=np.frombuffer(json.dumps(head).encode("utf-8"), np.uint8), **outcome.arrays)
    return buffer.getvalue()


def outcome_from_bytes(data: bytes) -> RasterOutcome:
    """The outcome :func:`outcome_bytes` wrote."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        head = json.loads(npz["__json__"].tobytes().decode("utf-8"))
        arrays = {k: npz[k] for k in npz.files if k != "__json__"}
    records = [CaptionRecord(**{**r, "extent": Extent(*r["extent"]), "concepts": [tuple(c) for c in r["concepts"]]})
               for r in head["records"]]
    tiles = [IndexTile(**{**t, "extent": Extent(*t["extent"])}) for t in head["tiles"]]
    return RasterOutcome(head["name"], head["crs_wkt"], head["warnings"], head["n_tiles"], records, tiles, arrays,
                         head["meta"])


def _plain(record: dict) -> dict:
    extent = record["extent"]
    return {**record, "extent": [extent["xmin"], extent["ymin"], extent["xmax"], extent["ymax"]]}
