"""Run in another Python: import every core module, then search a generated raster with the real bundle.

    python tests/compat/core_smoke.py BUNDLE_DIR WORK_DIR    -> one JSON line on stdout

Read by tests/compat/test_other_pythons.py, which runs it in each Python and in its own to compare.
The raster is tests/data/make_geotiffs.py's seeded scene, read through rasterio when that imports,
else the same pixels as an in-memory ArraySource.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
QUERIES = ("buildings with shadows", "a smooth green field")


def core_modules() -> list[str]:
    """Every module of ``rs_vlm_plugin.core`` (subpackages included)."""
    core = ROOT / "rs_vlm_plugin" / "core"
    return sorted("rs_vlm_plugin.core." + ".".join(p.relative_to(core).with_suffix("").parts).replace(".__init__", "")
                  for p in core.rglob("*.py") if "__pycache__" not in p.parts)


def load_make_geotiffs():
    spec = importlib.util.spec_from_file_location("make_geotiffs", ROOT / "tests" / "data" / "make_geotiffs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scene_source(work: Path):
    """The seeded test scene through rasterio; without rasterio, its pixels in memory (ArraySource)."""
    try:
        make = load_make_geotiffs()  # imports rasterio
    except ImportError:
        make = None
    if make is not None:
        from rs_vlm_plugin.core.raster import open_raster

        return open_raster(make.make_all(work, seed=0)["scene"]), "rasterio"
    import numpy as np

    from rs_vlm_plugin.core.raster import ArraySource

    rng = np.random.default_rng(0)  # no rasterio wheel for this Python: the same kind of scene in memory
    array = (rng.random((3, 512, 512)) * 255).astype(np.uint8)
    array[:, :, :256] = 90
    return ArraySource(array, name="scene"), "memory"


def main(bundle_dir: str, work: str) -> dict:
    imported = [importlib.import_module(m).__name__ for m in core_modules()]
    forbidden = sorted(m for m in sys.modules if m.split(".")[0] in {"qgis", "torch", "PyQt5", "PyQt6"})
    import numpy as np
    import onnxruntime

    from rs_vlm_plugin.core.bundle import ModelBundle, RuntimeOptions
    from rs_vlm_plugin.core.planning.dris import PlanConfig
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.core.jobs.search import search
    from rs_vlm_plugin import deps

    source, reader = scene_source(Path(work))
    bundle = ModelBundle.load(bundle_dir, RuntimeOptions("cpu", 1))
    config = JobConfig(plan=PlanConfig(max_tiles=6), max_hits=3)
    results = {}
    with source if hasattr(source, "__enter__") else contextlib.nullcontext():
        for query in QUERIES:
            result = search(source, bundle, query, None, config)
            results[query] = [{"score": round(float(h.score), 6),
                               "extent": [h.extent.xmin, h.extent.ymin, h.extent.xmax, h.extent.ymax]}
                              for h in result.hits]
    report = deps.check()
    return {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "modules": len(imported), "forbidden": forbidden, "reader": reader, "results": results,
            "deps_problems": [s.requirement.import_name for s in report.problems if s.requirement.required]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
