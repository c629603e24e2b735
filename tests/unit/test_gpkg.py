"""GeoPackage writer: round trip of fields and geometry, CRS, atomic replacement."""

from __future__ import annotations

import pytest
from osgeo import ogr, osr

from rs_vlm_plugin.core import gpkg
from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.geometry import Extent
from rs_vlm_plugin.core.gpkg import read_layer_names, write_geopackage
from rs_vlm_plugin.core.records import CaptionRecord, SearchHit

ogr.UseExceptions()


def utm_wkt() -> str:
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(26914)
    return srs.ExportToWkt()


def captions() -> list[CaptionRecord]:
    return [
        CaptionRecord("global", 0, Extent(500_000, 4_099_744, 500_256, 4_100_000), 1.14,
                      "Farmland beside a town.", [("farmland", 0.61), ("town", 0.2)], 0.61, 0.3, "scene"),
        CaptionRecord("region", 1, Extent(500_128, 4_099_872, 500_256, 4_100_000), 0.57,
                      "Houses along a road.", [("residential", 0.48)], 0.48, 0.7, "scene"),
    ]


def hits() -> list[SearchHit]:
    return [SearchHit("a road", rank, 0.9 - rank / 10, "object", 2,
                      Extent(500_000 + rank, 4_099_900, 500_064 + rank, 4_099_964), 0.29, "A road.", "scene")
            for rank in (1, 2, 3)]


def read_rows(path, layer_name: str) -> tuple[list[dict], list[tuple[float, float, float, float]], object]:
    ds = ogr.Open(str(path))
    layer = ds.GetLayerByName(layer_name)
    rows, envelopes = [], []
    for feature in layer:
        rows.append(feature.items())
        envelopes.append(feature.GetGeometryRef().GetEnvelope())  # (minx, maxx, miny, maxy)
    srs = layer.GetSpatialRef()
    srs = srs.Clone() if srs is not None else None
    return rows, envelopes, srs


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_round_trip_fields_counts_and_crs(tmp_path):
    path = write_geopackage(tmp_path / "out.gpkg",
                            {"captions": captions(), "hits": hits(), "no_hits": []},
                            utm_wkt(), kinds={"no_hits": SearchHit})
    assert path == tmp_path / "out.gpkg"
    assert read_layer_names(path) == ["captions", "hits", "no_hits"]

    rows, envelopes, srs = read_rows(path, "captions")
    assert rows[0] == {"level": "global", "depth": 0, "gsd_m": 1.14, "caption": "Farmland beside a town.",
                       "concepts": "farmland 0.61; town 0.20", "score": 0.61, "complexity": 0.3, "source": "scene"}
    assert envelopes[1] == (500_128, 500_256, 4_099_872, 4_100_000)
    assert srs.GetAuthorityCode(None) == "26914"

    rows, _, _ = read_rows(path, "hits")
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["query", "rank", "score", "level", "depth", "gsd_m", "caption", "source", "familiar"]

    ds = ogr.Open(str(path))
    empty = ds.GetLayerByName("no_hits")
    assert empty.GetFeatureCount() == 0
    definition = empty.GetLayerDefn()
    assert [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())][:2] == ["query", "rank"]
    assert empty.GetGeomType() == ogr.wkbPolygon
    assert leftovers(tmp_path) == []


def test_empty_layer_defaults_to_caption_fields(tmp_path):
    path = write_geopackage(tmp_path / "empty.gpkg", {"captions": []}, None)
    ds = ogr.Open(str(path))  # keep the datasource alive while its layer is used (GDAL < 3.8)
    definition = ds.GetLayerByName("captions").GetLayerDefn()
    names = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
    assert names == ["level", "depth", "gsd_m", "caption", "concepts", "score", "complexity", "source"]


def test_no_crs_writes_layers_without_srs(tmp_path):
    path = write_geopackage(tmp_path / "pixels.gpkg", {"captions": captions()}, None)
    rows, _, srs = read_rows(path, "captions")
    assert len(rows) == 2
    assert srs is None or (srs.IsLocal() and "Undefined Cartesian" in srs.ExportToWkt())  # never degrees
    ds = ogr.Open(str(path))
    result = ds.ExecuteSQL("SELECT srs_id FROM gpkg_geometry_columns")
    assert [f.GetField(0) for f in result] == [-1]
    ds.ReleaseResultSet(result)


@pytest.fixture
def fail_on_second_layer(monkeypatch):
    """Make the writer crash after the first layer was written."""
    original = gpkg._write_layer
    calls = []

    def flaky(ds, name, kind, records, srs):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        original(ds, name, kind, records, srs)

    monkeypatch.setattr(gpkg, "_write_layer", flaky)
    return calls


def test_failure_mid_write_leaves_nothing(tmp_path, fail_on_second_layer):
    target = tmp_path / "out.gpkg"
    with pytest.raises(OSError, match="simulated"):
        write_geopackage(target, {"captions": captions(), "hits": hits()}, utm_wkt())
    assert fail_on_second_layer == ["captions", "hits"]
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_an_existing_target_untouched(tmp_path, monkeypatch):
    target = write_geopackage(tmp_path / "out.gpkg", {"captions": captions()}, utm_wkt())
    before = target.read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("crash while writing (simulated)")

    monkeypatch.setattr(gpkg, "_write_layer", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        write_geopackage(target, {"hits": hits()}, utm_wkt())
    assert target.read_bytes() == before
    assert read_layer_names(target) == ["captions"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gpkg"]


def test_overwrite_replaces_its_layers_keeps_the_others_and_refuses_when_asked(tmp_path):
    target = write_geopackage(tmp_path / "out.gpkg", {"captions": captions()}, utm_wkt())
    write_geopackage(target, {"hits": hits()}, utm_wkt())
    assert read_layer_names(target) == ["captions", "hits"]  # the earlier layer is kept
    write_geopackage(target, {"captions": captions()[:1]}, utm_wkt())
    assert read_layer_names(target) == ["hits", "captions"]
    ds = ogr.Open(str(target))
    assert ds.GetLayerByName("captions").GetFeatureCount() == 1  # replaced, not appended to
    ds = None
    with pytest.raises(RsVlmError, match="already exists"):
        write_geopackage(target, {"captions": captions()}, utm_wkt(), overwrite=False)
    assert read_layer_names(target) == ["hits", "captions"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gpkg"]


def test_missing_folder_is_a_sentence(tmp_path):
    with pytest.raises(RsVlmError, match="does not exist; create it or choose another"):
        write_geopackage(tmp_path / "missing" / "out.gpkg", {"captions": captions()}, None)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(RsVlmError, match="does not exist"):
        write_geopackage(blocker / "out.gpkg", {"captions": captions()}, None)


def test_unwritable_folder_is_a_sentence(tmp_path, monkeypatch):
    monkeypatch.setattr(gpkg.os, "access", lambda path, mode: False)
    with pytest.raises(RsVlmError, match="not writable; choose a folder"):
        write_geopackage(tmp_path / "out.gpkg", {"captions": captions()}, None)
    assert list(tmp_path.iterdir()) == []


def test_mixed_record_types_are_refused(tmp_path):
    with pytest.raises(TypeError, match="mixes"):
        write_geopackage(tmp_path / "out.gpkg", {"mixed": [captions()[0], hits()[0]]}, None)
    assert list(tmp_path.iterdir()) == []


def test_target_that_cannot_be_replaced_is_a_sentence(tmp_path):
    (tmp_path / "busy.gpkg").mkdir()  # a folder in the way stands in for a locked file
    with pytest.raises(RsVlmError, match="Could not replace"):
        write_geopackage(tmp_path / "busy.gpkg", {"captions": captions()}, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.gpkg"]
