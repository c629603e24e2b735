"""Writing result records to a GeoPackage, atomically.

The file is written under a temporary name in the target folder and renamed over the target
only once it is complete and closed, so a failed, cancelled or killed job leaves either the old
file or nothing, never half a GeoPackage. Replacing an existing GeoPackage keeps its other layers
and tables: the temporary file starts as a copy of it (SQLite's backup, which sees a WAL too), and
only the layers the job writes are replaced.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, Union

from .errors import RsVlmError
from .records import CaptionRecord, ClassRecord, EvidenceRecord, IndexTile, OutlineRecord, PlanTileRecord, SearchHit

# typing.Union: module-level aliases are evaluated at import (no ``|`` between classes on Python 3.9).
Record = Union[CaptionRecord, SearchHit, ClassRecord, EvidenceRecord, PlanTileRecord, IndexTile, OutlineRecord]


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # "str", "int" or "real"
    value: Callable[[Any], Any]


def _attr(name: str) -> Callable[[Any], Any]:
    return lambda record: getattr(record, name)


SCHEMAS: dict[type, tuple[_Field, ...]] = {
    CaptionRecord: (
        _Field("level", "str", _attr("level")),
        _Field("depth", "int", _attr("depth")),
        _Field("gsd_m", "real", _attr("gsd_m")),
        _Field("caption", "str", _attr("caption")),
        _Field("concepts", "str", lambda r: r.concepts_text()),
        _Field("score", "real", _attr("score")),
        _Field("complexity", "real", _attr("complexity")),
        _Field("source", "str", _attr("source")),
    ),
    SearchHit: (
        _Field("query", "str", _attr("query")),
        _Field("rank", "int", _attr("rank")),
        _Field("score", "real", _attr("score")),
        _Field("level", "str", _attr("level")),
        _Field("depth", "int", _attr("depth")),
        _Field("gsd_m", "real", _attr("gsd_m")),
        _Field("caption", "str", _attr("caption")),
        _Field("source", "str", _attr("source")),
        _Field("familiar", "real", _attr("familiar")),
    ),
    ClassRecord: (
        _Field("class", "str", _attr("label")),
        _Field("confidence", "real", _attr("confidence")),
        _Field("runner_up", "str", _attr("runner_up")),
        _Field("level", "str", _attr("level")),
        _Field("depth", "int", _attr("depth")),
        _Field("gsd_m", "real", _attr("gsd_m")),
        _Field("source", "str", _attr("source")),
        _Field("familiar", "real", _attr("familiar")),
    ),
    EvidenceRecord: (
        _Field("question", "str", _attr("question")),
        _Field("answer", "str", _attr("answer")),
        _Field("rank", "int", _attr("rank")),
        _Field("score", "real", _attr("score")),
        _Field("level", "str", _attr("level")),
        _Field("depth", "int", _attr("depth")),
        _Field("caption", "str", _attr("caption")),
        _Field("source", "str", _attr("source")),
        _Field("familiar", "real", _attr("familiar")),
    ),
    PlanTileRecord: (
        _Field("key", "str", _attr("key")),
        _Field("depth", "int", _attr("depth")),
        _Field("complexity", "real", _attr("complexity")),
        _Field("is_leaf", "int", lambda r: int(r.is_leaf)),
        _Field("gsd_m", "real", _attr("gsd_m")),
        _Field("source", "str", _attr("source")),
        _Field("reason", "str", _attr("reason")),
        _Field("score", "real", _attr("score")),
    ),
    OutlineRecord: (
        _Field("query", "str", _attr("query")),
        _Field("rank", "int", _attr("rank")),
        _Field("score", "real", _attr("score")),
        _Field("shape", "str", _attr("shape")),
        _Field("cells", "int", _attr("cells")),
        _Field("area_m2", "real", _attr("area_m2")),
        _Field("depth", "int", _attr("depth")),
        _Field("gsd_m", "real", _attr("gsd_m")),
        _Field("source", "str", _attr("source")),
        _Field("familiar", "real", _attr("familiar")),
        _Field("found_by", "str", _attr("found_by")),
        _Field("tile", "str", _attr("tile")),
    ),
    IndexTile: (
        _Field("tile_id", "int", _attr("tile_id")),
        _Field("tile_key", "str", _attr("key")),
        _Field("level", "str", _attr("level")),
        _Field("depth", "int", _attr("depth")),
        _Field("gsd_m", "real", _attr("gsd_m")),
        _Field("complexity", "real", _attr("complexity")),
    ),
}
"""Attribute fields of each record type, in column order."""


def write_geopackage(path: str | Path, layers: dict[str, Sequence[Record]], crs_wkt: str | None,
                     overwrite: bool = True, kinds: dict[str, type] | None = None,
                     finish: Callable[[Path], None] | None = None) -> Path:
    """Write records as polygon layers of a new GeoPackage.

    Args:
        path: The GeoPackage to write.
        layers: Records by layer name; each layer holds one record type. Empty layers are
            created with their fields.
        crs_wkt: The CRS of the records' extents as WKT; None writes layers without a CRS.
        overwrite: Replace an existing file; when False an existing file is an error. An existing
            GeoPackage keeps its other layers (only the layers in ``layers`` are replaced).
        kinds: Record type by layer name, for empty layers (otherwise taken from the first
            record; CaptionRecord when a layer is empty and not listed).
        finish: Called with the temporary file once GDAL has closed it and before it is renamed
            to ``path`` (to add tables with sqlite3, or to check for cancellation); what it
            raises aborts the write and removes the temporary file.

    Returns:
        The path written.

    Raises:
        RsVlmError: The folder is missing or not writable, the file exists and ``overwrite``
            is False, or GDAL could not write the file.
    """
    from osgeo import ogr

    ogr.UseExceptions()
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise RsVlmError(f"The folder {folder} does not exist; create it or choose another output file.")
    if not os.access(folder, os.W_OK):
        raise RsVlmError(f"The folder {folder} is not writable; choose a folder you can write to.")
    if target.exists() and not overwrite:
        raise RsVlmError(f"{target} already exists; choose another file name or allow overwriting.")
    schemas = {name: _layer_kind(name, records, kinds) for name, records in layers.items()}
    srs = _spatial_reference(crs_wkt)

    temporary = folder / f".{target.stem}.tmp-{os.getpid()}.gpkg"
    _remove_stale_temporaries(folder, target.stem)
    _remove_sqlite_files(temporary)
    ds = None
    try:
        if target.is_file() and _is_geopackage(target):
            ds = _copy_to_update(target, temporary, list(layers))
        else:
            try:
                ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(temporary))
            except RuntimeError as exc:
                raise RsVlmError(
                    f"Could not create a GeoPackage in {folder} ({exc}); check that the folder is writable "
                    "and the disk is not full."
                ) from exc
        for name, records in layers.items():
            _write_layer(ds, name, schemas[name], records, srs)
        finished, ds = ds, None  # never close twice: a closed proxy points at freed memory
        _close(finished)  # closing the datasource finishes the file
        if finish is not None:
            finish(temporary)
        try:
            os.replace(temporary, target)
        except OSError as exc:
            raise RsVlmError(
                f"Could not replace {target} ({exc.strerror or exc}); close it in other programs "
                "(or remove its layers from QGIS) and try again, or choose another file name."
            ) from exc
    except BaseException:
        if ds is not None:
            try:
                _close(ds)
            except Exception:  # noqa: BLE001 - the error that got us here matters more
                pass
        _remove_sqlite_files(temporary)
        raise
    return target


def _is_geopackage(path: Path) -> bool:
    """Whether a file starts as an SQLite database with the GeoPackage application id."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(72)
    except OSError:
        return False
    return header[:16] == b"SQLite format 3\x00" and header[68:72] == b"GPKG"


def _copy_to_update(target: Path, temporary: Path, replaced: list[str]):
    """``target`` copied to ``temporary`` and opened for update, without the layers named in ``replaced``.

    Raises:
        RsVlmError: The existing GeoPackage cannot be read (it is then left as it is).
    """
    from osgeo import ogr

    try:
        source = sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True)
        try:
            copy = sqlite3.connect(str(temporary))
            try:
                source.backup(copy)
            finally:
                copy.close()
        finally:
            source.close()
        ds = ogr.Open(str(temporary), update=1)
    except (sqlite3.Error, RuntimeError) as exc:
        raise RsVlmError(
            f"The existing GeoPackage {target} cannot be read ({exc}), so its other layers could not be kept; it "
            "was left as it is. Choose another file name, or delete it first.") from exc
    for name in replaced:
        for i in range(ds.GetLayerCount()):
            if ds.GetLayerByIndex(i).GetName().lower() == name.lower():  # GeoPackage table names ignore case
                ds.DeleteLayer(i)
                break
    return ds


def _remove_stale_temporaries(folder: Path, stem: str) -> None:
    """Remove the temporary files of writes of this output whose process died (``kill -9``, a crash)."""
    prefix = f".{stem}.tmp-"
    for path in folder.iterdir():
        pid = path.name[len(prefix):-len(".gpkg")]
        if not (path.name.startswith(prefix) and path.name.endswith(".gpkg")) or not pid.isdigit() \
                or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_sqlite_files(path)
        except OSError:
            pass  # runs, under another user


def read_layer_names(path: str | Path) -> list[str]:
    """Names of the layers of a vector file, in file order."""
    from osgeo import ogr

    ogr.UseExceptions()
    ds = ogr.Open(str(path))
    try:
        return [ds.GetLayerByIndex(i).GetName() for i in range(ds.GetLayerCount())]
    finally:
        ds = None


def _layer_kind(name: str, records: Sequence[Record], kinds: dict[str, type] | None) -> type:
    kind = (kinds or {}).get(name) or (type(records[0]) if records else CaptionRecord)
    if kind not in SCHEMAS:
        raise TypeError(f"Layer {name!r}: cannot write records of type {kind.__name__}.")
    for record in records:
        if type(record) is not kind:
            raise TypeError(f"Layer {name!r} mixes {kind.__name__} and {type(record).__name__} records.")
    return kind


def _spatial_reference(crs_wkt: str | None):
    if not crs_wkt:
        return None
    from osgeo import osr

    osr.UseExceptions()
    srs = osr.SpatialReference()
    try:
        srs.ImportFromWkt(crs_wkt)
    except RuntimeError as exc:
        raise ValueError(f"The CRS WKT could not be read: {exc}") from exc
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)  # x = easting / longitude
    return srs


def _write_layer(ds, name: str, kind: type, records: Sequence[Record], srs) -> None:
    """Create one polygon layer with the fields of ``kind`` and add ``records`` to it."""
    from osgeo import ogr

    field_types = {"str": ogr.OFTString, "int": ogr.OFTInteger, "real": ogr.OFTReal}
    layer = ds.CreateLayer(name, srs, ogr.wkbPolygon, options=["GEOMETRY_NAME=geom", "FID=fid"])
    fields = SCHEMAS[kind]
    for field in fields:
        layer.CreateField(ogr.FieldDefn(field.name, field_types[field.kind]))
    definition = layer.GetLayerDefn()
    layer.StartTransaction()
    for record in records:
        feature = ogr.Feature(definition)
        for field in fields:
            value = field.value(record)
            if value is None:
                feature.SetFieldNull(field.name)
            else:
                feature.SetField(field.name, value)
        wkb = getattr(record, "geometry_wkb", b"")  # outlines carry their own polygon; tiles are their extent
        feature.SetGeometry(ogr.CreateGeometryFromWkb(bytes(wkb)) if wkb else _polygon(record.extent))
        layer.CreateFeature(feature)
    layer.CommitTransaction()
    if srs is None:
        # GDAL 3.6 files a layer without SRS under srs_id 0, "Undefined geographic SRS", which
        # would present pixel coordinates as degrees; -1 is the GeoPackage's undefined Cartesian SRS.
        quoted = name.replace("'", "''")
        for table in ("gpkg_geometry_columns", "gpkg_contents"):
            ds.ExecuteSQL(f"UPDATE {table} SET srs_id = -1 WHERE table_name = '{quoted}'")


def _close(ds) -> None:
    """Close a datasource now, even while a traceback still refers to it.

    Dropping the last reference is not enough after an error: the traceback's frames keep the
    datasource open, and it would write into the removed temporary file when finally freed.
    """
    close = getattr(ds, "Close", None) or ds.Destroy  # Close() from GDAL 3.8, Destroy() before
    close()


def _polygon(extent):
    from osgeo import ogr

    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((extent.xmin, extent.ymin), (extent.xmax, extent.ymin), (extent.xmax, extent.ymax),
                 (extent.xmin, extent.ymax), (extent.xmin, extent.ymin)):
        ring.AddPoint_2D(x, y)
    polygon = ogr.Geometry(ogr.wkbPolygon)
    polygon.AddGeometry(ring)
    return polygon


def _remove_sqlite_files(path: Path) -> None:
    """Remove a GeoPackage and the SQLite journal files beside it, where present."""
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm"))):
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass
