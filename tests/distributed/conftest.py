"""Fixtures of the Dask tests: a real LocalCluster of 2 worker processes, generated rasters."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _make_geotiffs():
    spec = importlib.util.spec_from_file_location("make_geotiffs", ROOT / "tests" / "data" / "make_geotiffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def dask_client():
    """A Client of a LocalCluster: 2 worker processes of 1 thread (the nanny restarts a killed one)."""
    dd = pytest.importorskip("dask.distributed")
    cluster = dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                              silence_logs=50)
    client = dd.Client(cluster, set_as_default=False)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> dict[str, Path]:
    """Seeded GeoTIFFs of one CRS (EPSG:26914): the 512 px scene, the gradient, the uint16 raster
    with a nodata block, a 3072 x 1024 strip (3 DRIS roots) and a text file posing as a .tif."""
    module = _make_geotiffs()
    made = module.make_all(tmp_path_factory.mktemp("made"), seed=0)
    folder = tmp_path_factory.mktemp("archive")
    for key in ("scene", "gradient", "uint16_nodata"):
        shutil.copy(made[key], folder / f"{key}.tif")
    rng = np.random.default_rng(3)
    strip = np.concatenate([module.scene_array(rng, 1024), module.scene_array(rng, 1024)[:, ::-1],
                            module.scene_array(rng, 1024)[:, :, ::-1]], axis=2)
    module._write(folder / "strip.tif", strip, module.CRS.from_epsg(26914),
                  module.from_origin(*module.UTM_ORIGIN, module.PIXEL_M, module.PIXEL_M))
    bad = tmp_path_factory.mktemp("bad") / "broken.tif"
    shutil.copy(made["not_a_raster"], bad)
    return {"scene": folder / "scene.tif", "gradient": folder / "gradient.tif",
            "uint16_nodata": folder / "uint16_nodata.tif", "strip": folder / "strip.tif", "broken": bad}


def gpkg_rows(path: Path, layer: str) -> list[tuple[dict, bytes]]:
    """Every feature of a layer in file order: its attributes and its geometry as WKB."""
    from osgeo import ogr

    ds = ogr.Open(str(path))
    try:
        return [(f.items(), bytes(f.GetGeometryRef().ExportToWkb())) for f in ds.GetLayerByName(layer)]
    finally:
        ds = None
