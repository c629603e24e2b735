"""The main job on the demo scene (run by `python3 build.py demo`).

Captions at three levels and a text search on the NEON demo scene, written to one GeoPackage
(`out/demo.gpkg`), a map rendered by QGIS itself (`out/demo.png`: the raster with the styled,
labelled result layers on top) and a short table in the terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rs_vlm_plugin.core.bundle import ModelBundle, default_bundle_dir  # noqa: E402
from rs_vlm_plugin.core.cli import format_table  # noqa: E402
from rs_vlm_plugin.core.gpkg import write_geopackage  # noqa: E402
from rs_vlm_plugin.core.jobs.ask import ask
from rs_vlm_plugin.core.jobs.classify import classify
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.describe import describe
from rs_vlm_plugin.core.jobs.results import result_kinds, result_layers
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.progress import TerminalProgress  # noqa: E402
from rs_vlm_plugin.core.raster import open_raster  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from demo_annotations import runs_through  # noqa: E402

DEMO_QUERY = "a paved road through a forest"


def _draw(scene: Path, gpkg: Path, layer_names: list[str], png: Path) -> Path:
    from qgis.core import QgsRasterLayer

    from rs_vlm_plugin.qgis_shell.layers import display_name, open_layer, style_layer
    from rs_vlm_plugin.qgis_shell.render import render_png

    raster = QgsRasterLayer(str(scene), "demo scene")
    layers = []
    for name in layer_names:
        layer = open_layer(gpkg, name, display_name(name))
        style_layer(layer, name)
        layers.append(layer)
    return render_png(list(reversed(layers)) + [raster], raster.extent(), png, width=1600)


def render(scene: Path, gpkg: Path, layer_names: list[str], png: Path) -> Path:
    """Draw the raster and the result layers with QGIS's renderer.

    The layers live only inside :func:`_draw`, so they are gone before QGIS exits.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    try:
        return _draw(scene, gpkg, layer_names, png)
    finally:
        app.exitQgis()


def main() -> int:
    """Describe and search the demo scene, write the outputs, print a table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--scene", type=Path, default=ROOT / ".cache" / "samples" / "demo_scene.tif")
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    parser.add_argument("--query", default=DEMO_QUERY)
    parser.add_argument("--hits", type=int, default=5, help="search hits to keep and draw")
    parser.add_argument("--question", default="How much of the area is forest?", help="a question to answer")
    args = parser.parse_args()
    start = time.perf_counter()
    bundle = ModelBundle.load(default_bundle_dir())
    progress = TerminalProgress()
    with open_raster(args.scene) as source:
        described = describe(source, bundle, progress=progress)
        found = search(source, bundle, args.query, config=JobConfig(max_hits=args.hits), progress=progress)
        classes = classify(source, bundle, ["forest", "meadow", "road", "water", "buildings"], progress=progress)
        answer = ask(source, bundle, args.question, progress=progress)
    progress.close()
    layers = result_layers(described) | result_layers(found) | result_layers(classes) | result_layers(answer)
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = result_kinds(described) | result_kinds(found) | result_kinds(classes) | result_kinds(answer)
    gpkg = write_geopackage(args.out / "demo.gpkg", layers, described.crs_wkt, kinds=kinds)
    png = render(args.scene, gpkg, ["captions_region", "captions_object", "search_hits"], args.out / "demo.png")
    print()
    print(f"Global caption: {described.global_caption}")
    print(format_table(described))
    print()
    print(format_table(found))
    if args.query == DEMO_QUERY and found.hits and args.scene.name == "demo_scene.tif":
        import rasterio

        with rasterio.open(args.scene) as ds:
            on_road = runs_through(found.hits[0].extent, ds.transform)
        print(f"The first hit {'is' if on_road else 'is NOT'} on the road (scripts/demo_annotations.py).")
    print()
    print(format_table(classes))
    print()
    print(format_table(answer))
    print(f"\nExperts' mean routing weights (object, region, scene expert): {described.timings.get('routing')}")
    print(f"\nWrote {gpkg} ({', '.join(f'{k}: {len(v)}' for k, v in layers.items())}) and {png}")
    print(f"Whole job: {time.perf_counter() - start:.1f} s on {', '.join(bundle.providers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
