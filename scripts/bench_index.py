"""Benchmark of the embedding index (run by `python3 build.py bench-index`): prints figures.

Imagery: a GDAL VRT mosaic that repeats the real NEON aerial scene `demo_scene_large.tif`
(2299 x 2472 px at 0.1 m) in a grid of copies (18 x 6 by default: 41,382 x 14,832 px,
614 Mpx). The copies are identical, so the mosaic is real imagery but not 600 Mpx of *distinct*
ground; tile reads and encoding cost the same as on distinct imagery, and search ranks ties
among identical tiles by tile order as pipeline.search does.

1. Build: the uniform full-resolution grid (about 12,300 tiles with the default grid),
   encoded once into an index GeoPackage; build time, tiles, file size.
2. Open: time to read the index into memory.
3. Queries: at least 200 varied remote-sensing phrases, each timed split into text encoding
   (the text tower), scoring (one matrix product + top-k) and composing the hits' captions;
   median and p95 per part.

Writes out/bench_index.json. No assertion on any figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from rs_vlm_plugin.core.bundle import ModelBundle, RuntimeOptions, default_bundle_dir
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.jobs.index import EmbeddingIndex, build_index
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.progress import TerminalProgress
from rs_vlm_plugin.core.raster import open_raster

SUBJECTS = (
    "trees", "conifer trees", "deciduous trees", "dense forest", "a forest clearing", "fallen trees",
    "a burnt forest", "shrubs", "grassland", "a meadow", "bare soil", "exposed rock", "sand", "a desert",
    "snow", "a mountain slope", "a river", "a lake", "a pond", "a wetland", "a canal", "a dam", "a beach",
    "a harbor with boats", "a bridge over water", "a dirt road", "a paved road", "a road through a forest",
    "a highway interchange", "a roundabout", "a railway", "an airport runway", "airplanes", "a parking lot",
    "a parking lot full of cars", "cars", "buildings", "a residential area", "dense houses", "an industrial area",
    "storage tanks", "a construction site", "a quarry", "farmland", "a crop field", "an orchard",
    "a golf course", "a baseball field", "a tennis court", "a swimming pool", "a stadium", "a church",
    "solar panels", "a hiking trail",
)
TEMPLATES = ("{}", "an aerial image of {}", "{} seen from above", "a satellite photo showing {}")


def queries(n: int) -> list[str]:
    """``n`` distinct phrases (subjects x templates, cycled)."""
    all_phrases = [t.format(s) for t in TEMPLATES for s in SUBJECTS]
    return [all_phrases[i % len(all_phrases)] for i in range(n)]


def mosaic_vrt(scene: Path, out: Path, nx: int, ny: int) -> Path:
    """A VRT repeating ``scene`` ``nx`` x ``ny`` times, with the scene's CRS and pixel size."""
    import rasterio

    with rasterio.open(scene) as ds:
        w, h, bands = ds.width, ds.height, ds.count
        t, crs, dtype = ds.transform, ds.crs.to_wkt(), ds.dtypes[0]
        block = ds.block_shapes[0]
    vrt_type = {"uint8": "Byte", "uint16": "UInt16", "float32": "Float32"}[dtype]
    lines = [f'<VRTDataset rasterXSize="{nx * w}" rasterYSize="{ny * h}">',
             f"  <SRS>{escape(crs)}</SRS>",
             f"  <GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>"]
    for band in range(1, min(bands, 3) + 1):
        colour = ("Red", "Green", "Blue")[band - 1]
        lines.append(f'  <VRTRasterBand dataType="{vrt_type}" band="{band}">')
        lines.append(f"    <ColorInterp>{colour}</ColorInterp>")
        for j in range(ny):
            for i in range(nx):
                lines += [
                    "    <SimpleSource>",
                    f'      <SourceFilename relativeToVRT="0">{escape(str(scene.resolve()))}</SourceFilename>',
                    f"      <SourceBand>{band}</SourceBand>",
                    f'      <SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="{vrt_type}" '
                    f'BlockXSize="{block[1]}" BlockYSize="{block[0]}"/>',
                    f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>',
                    f'      <DstRect xOff="{i * w}" yOff="{j * h}" xSize="{w}" ySize="{h}"/>',
                    "    </SimpleSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def stats(values: list[float]) -> dict:
    """Median, p95 and mean in milliseconds."""
    ms = 1000.0 * np.asarray(values)
    return {"median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=Path(".cache/samples"))
    parser.add_argument("--work", type=Path, default=Path(".cache/bench_index"), help="folder for the VRT and index")
    parser.add_argument("--grid", default="18x6", help="copies of the scene across x down (default 18x6)")
    parser.add_argument("--queries", type=int, default=216, help="number of timed queries (at least 200)")
    parser.add_argument("--max-hits", type=int, default=10)
    parser.add_argument("--reuse", action="store_true", help="reuse an index built by an earlier run")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, default=Path("out/bench_index.json"))
    args = parser.parse_args()
    nx, ny = (int(v) for v in args.grid.lower().split("x"))
    scene = args.samples / "demo_scene_large.tif"
    vrt = mosaic_vrt(scene, args.work / f"mosaic_{nx}x{ny}.vrt", nx, ny)
    index_path = args.work / f"mosaic_{nx}x{ny}.rsvlm-index.gpkg"
    bundle = ModelBundle.load(default_bundle_dir(), RuntimeOptions(args.device))
    report: dict = {"imagery": f"VRT mosaic of {nx} x {ny} copies of {scene.name} (real NEON aerial RGB, 0.1 m)",
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "providers": bundle.providers}}
    with open_raster(vrt) as source:
        report["raster_px"] = [source.georef.width, source.georef.height]
        if args.reuse and index_path.exists():
            print(f"Reusing {index_path}")
        else:
            config = JobConfig(plan=PlanConfig(uniform=True, max_tiles=1_000_000), batch_size=32)
            progress = TerminalProgress()
            start = time.perf_counter()
            try:
                build_index(source, bundle, index_path, config=config, progress=progress)
            finally:
                progress.close()
            print(f"Built in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    index = EmbeddingIndex.open(index_path)
    open_s = time.perf_counter() - start
    meta = index.meta
    report |= {"tiles": len(index), "leaves": meta["plan_summary"]["tiles"], "build_s": meta["build_s"],
               "build_timings_s": {k: round(v, 2) for k, v in meta["encode_timings"].items()},
               "index_file": str(index_path), "file_mb": round(index_path.stat().st_size / 1e6, 1),
               "dtype": meta["dtype"], "open_s": round(open_s, 3),
               "matrix_mb": round(index.tokens.nbytes / 1e6, 1)}

    phrases = queries(max(200, args.queries))
    for warm in phrases[:3]:  # first calls create the text session
        index.search(bundle, warm, args.max_hits)
    parts: dict[str, list[float]] = {"text": [], "score": [], "caption": [], "total": []}
    examples = {}
    for phrase in phrases:
        t0 = time.perf_counter()
        result = index.search(bundle, phrase, args.max_hits)
        parts["total"].append(time.perf_counter() - t0)
        for part in ("text", "score", "caption"):
            parts[part].append(result.timings[f"{part}_s"])
        if phrase in SUBJECTS[:6]:
            examples[phrase] = [(h.rank, round(h.score, 3), h.level, h.caption) for h in result.hits[:3]]
    report["queries"] = len(phrases)
    report["distinct_queries"] = len(set(phrases))
    report["latency"] = {part: stats(values) for part, values in parts.items()}
    report["examples"] = examples

    print(f"Imagery: {report['imagery']}; {report['raster_px'][0]} x {report['raster_px'][1]} px")
    print(f"Index: {report['tiles']} tiles ({report['leaves']} fine + regions), built in {report['build_s']:.1f} s "
          f"(read {report['build_timings_s'].get('read_s', 0):.1f} s, encode "
          f"{report['build_timings_s'].get('encode_s', 0):.1f} s), file {report['file_mb']} MB ({report['dtype']}), "
          f"opened in {1000 * open_s:.0f} ms ({report['matrix_mb']} MB in memory)")
    print(f"{len(phrases)} queries ({report['distinct_queries']} distinct), per query:")
    for part, row in report["latency"].items():
        print(f"  {part:<8} median {row['median_ms']:8.2f} ms   p95 {row['p95_ms']:8.2f} ms")
    for phrase, hits in examples.items():
        print(f"  {phrase!r}: " + "; ".join(f"{s:.3f} {lvl} {cap}" for _, s, lvl, cap in hits[:2]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
