"""Locate benchmark (run by `python3 build.py bench-locate --data ../shared/data`): where is it, and how
much did it cost to find out?

Large scenes are mosaics of the VHR-10 images that training holds back (the same hash choice as
``rs_vlm_train.features``: 20 % of the images in ``<data>/vhr10``, seed 0), 4 x 4 images a scene
at their own pixel size, their boxes moved with them; plus the NAIP scenes of ``<data>/scenes/naip``
(no boxes). Each object class is a query ("airplanes", "storage tanks", ...), answered three ways:

- text-guided DRIS (``locate.guided``): coarse first, refined where the query scores, down to native;
- complexity DRIS on the native grid (the plan Describe uses), with the same budget of tiles;
- the native uniform grid (every tile at the raster's pixel size): the reference;
- boxes (issue 22): the object box head (``locate.boxes``) on the native tiles text-guided DRIS chose,
  one box per object (the model must have a box head; otherwise the method is left out).

The budget of both DRIS variants is a share (``--share``, 0.30) of the native grid's tiles. For
each: box AP at IoU 0.5 of the outlines (their bounding boxes, pooled over the scenes per class),
recall of object centres inside the outlines and inside the 10 tile hits, the answers' share of
the scene area, and the tiles and pixels encoded; for guided DRIS also the planning share of the
job. NAIP scenes have no boxes: there only the cost, the area share of the answers and how much of
the native grid's outline area the DRIS outlines cover are reported.

Writes out/bench_locate.json. No assertion on any figure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rs_vlm_plugin.core.bundle import ModelBundle, RuntimeOptions, default_bundle_dir  # noqa: E402
from rs_vlm_plugin.core.planning.dris import PlanConfig  # noqa: E402
from rs_vlm_plugin.core.expansion import expand_queries  # noqa: E402
from rs_vlm_plugin.core.locate.boxes import BoxConfig, find_boxes  # noqa: E402
from rs_vlm_plugin.core.locate.guided import guided_encoding  # noqa: E402
from rs_vlm_plugin.core.locate.metrics import average_precision  # noqa: E402
from rs_vlm_plugin.core.locate.outlines import find_outlines  # noqa: E402
from rs_vlm_plugin.core.locate.relevance import LocateConfig  # noqa: E402
from rs_vlm_plugin.core.encoding.encode import encode_extent  # noqa: E402
from rs_vlm_plugin.core.jobs.config import JobConfig  # noqa: E402
from rs_vlm_plugin.core.jobs.query import refined_rows, tile_scores  # noqa: E402
from rs_vlm_plugin.core.progress import NullProgress  # noqa: E402
from rs_vlm_plugin.core.raster import open_raster  # noqa: E402

QUERIES = {"airplane": "airplanes", "ship": "ships", "storage tank": "storage tanks",
           "baseball diamond": "baseball diamonds", "tennis court": "tennis courts",
           "basketball court": "basketball courts", "ground track field": "ground track fields",
           "harbor": "harbors", "bridge": "bridges", "vehicle": "vehicles"}
NAIP_QUERIES = ("a lake", "roads", "farmland", "buildings")
METHODS = ("guided", "complexity", "native", "boxes")
SCENE_PX = 2560 * 2560  # seconds are also given per 2560 x 2560 px of scene
HITS = 10


def held_back_images(data: Path):
    """The held-back VHR-10 images and their boxes, chosen as training chooses them."""
    from rs_vlm_train.data import held_out, read_object_boxes
    from rs_vlm_train.features import HELD_OUT_FRACTION

    boxes = read_object_boxes(data / "vhr10")
    held = held_out(sorted({b.image.name for b in boxes}), HELD_OUT_FRACTION, 0)
    by_image: dict[Path, list] = {}
    for b in boxes:
        if b.image.name in held:
            by_image.setdefault(b.image, []).append(b)
    return sorted(by_image.items())


def write_mosaics(images, per_side: int, work: Path) -> list[tuple[Path, list[tuple[str, tuple]]]]:
    """GeoTIFF mosaics of ``per_side`` x ``per_side`` images (pixel-sized cells of the largest image),
    1 m pixels in EPSG:3857; returns each file with its boxes (class, map box)."""
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    work.mkdir(parents=True, exist_ok=True)
    per_scene = per_side * per_side
    scenes = []
    for first in range(0, len(images) - per_scene + 1, per_scene):
        group = images[first:first + per_scene]
        pictures = [np.asarray(Image.open(path).convert("RGB")) for path, _ in group]
        cw = max(p.shape[1] for p in pictures)
        ch = max(p.shape[0] for p in pictures)
        canvas = np.zeros((per_side * ch, per_side * cw, 3), np.uint8)
        truth = []
        for k, ((_, boxes), picture) in enumerate(zip(group, pictures)):
            row, col = divmod(k, per_side)
            x0, y0 = col * cw, row * ch
            canvas[y0:y0 + picture.shape[0], x0:x0 + picture.shape[1]] = picture
            height = canvas.shape[0]
            for b in boxes:  # pixel box -> map box (y up)
                truth.append((b.label, (x0 + b.x1, height - (y0 + b.y2), x0 + b.x2, height - (y0 + b.y1))))
        path = work / f"vhr10_mosaic_{len(scenes):02d}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=canvas.shape[1], height=canvas.shape[0], count=3,
                           dtype="uint8", crs="EPSG:3857", transform=from_origin(0, canvas.shape[0], 1.0, 1.0),
                           tiled=True, blockxsize=256, blockysize=256, compress="deflate") as ds:
            ds.write(canvas.transpose(2, 0, 1))
        scenes.append((path, truth))
    return scenes


def answer(encoding, bundle, text: str, scorer, mpu: float) -> dict:
    """Hits (10 best tiles), outlines and the cost of one query on one encoding."""
    scores = tile_scores(encoding, scorer)
    refined = refined_rows(encoding)  # as search does: a guided plan's tiles read closer are not hits
    rows = [i for i, t in enumerate(encoding.tiles) if "global" not in t.levels and i not in refined]
    rows.sort(key=lambda i: -scores[i])
    hits = [encoding.tiles[i].extent for i in rows[:HITS]]
    outlines = find_outlines(encoding, bundle, text, mpu)
    return {"hits": hits, "outlines": outlines, "tiles": len(encoding.tiles),
            "pixels": len(encoding.tiles) * bundle.image_size ** 2}


def union_area(polygons) -> float:
    from shapely.ops import unary_union

    return float(unary_union(polygons).area) if polygons else 0.0


def outline_polygons(outlines):
    from shapely import wkb

    return [wkb.loads(o.geometry_wkb) for o in outlines]


def centre_recall(truths, polygons) -> tuple[int, int]:
    from shapely.geometry import Point
    from shapely.ops import unary_union
    from shapely.prepared import prep

    if not truths:
        return 0, 0
    if not polygons:
        return 0, len(truths)
    area = prep(unary_union(polygons))
    inside = sum(area.contains(Point((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)) for b in truths)
    return inside, len(truths)


def run_scene(path: Path, bundle, queries: dict[str, str], share: float, budget_floor: int,
              zoom_out: float = BoxConfig().zoom_out) -> dict:
    """Every method on one scene for every query: per query the answers and costs."""
    progress = NullProgress()
    out = {"file": path.name, "queries": {}}
    with open_raster(path) as source:
        g = source.georef
        extent = g.extent
        scene_area = extent.width * extent.height
        native_config = JobConfig(plan=PlanConfig(uniform=True, native=True, max_uniform_tiles=None), guided=False)
        t0 = time.perf_counter()
        native = encode_extent(source, bundle, extent, native_config, progress)
        native_s = time.perf_counter() - t0
        n_native = sum("object" in t.levels for t in native.tiles)
        budget = max(budget_floor, int(share * n_native))
        dris_config = JobConfig(plan=PlanConfig(native=True, max_tiles=budget), guided=False)
        t0 = time.perf_counter()
        complexity = encode_extent(source, bundle, extent, dris_config, progress)
        complexity_s = time.perf_counter() - t0
        out.update(width=g.width, height=g.height, native_tiles=n_native, budget=budget,
                   native_encoded=len(native.tiles), native_s=native_s, complexity_s=complexity_s,
                   complexity_encoded=len(complexity.tiles))
        guided_config = JobConfig(plan=PlanConfig(max_tiles=budget), guided=True)
        for label, text in queries.items():
            scorer = expand_queries(bundle, [text]).scorer(0)
            t0 = time.perf_counter()
            guided = guided_encoding(source, bundle, extent, guided_config, scorer, progress, text=text)
            guided_s = time.perf_counter() - t0
            row = {}
            for method, encoding in (("guided", guided), ("complexity", complexity), ("native", native)):
                got = answer(encoding, bundle, text, scorer, g.metres_per_unit)
                polygons = outline_polygons(got["outlines"])
                row[method] = {
                    "tiles": got["tiles"], "pixels": got["pixels"],
                    "outlines": [(o.score, o.extent.as_tuple()) for o in got["outlines"]],
                    "outline_share": union_area(polygons) / scene_area,
                    "hit_share": union_area([h.to_polygon() for h in got["hits"]]) / scene_area,
                    "_polygons": polygons, "_hits": got["hits"],
                }
            if bundle.box_head is not None:
                t0 = time.perf_counter()
                boxes = find_boxes(guided, bundle, source, text, BoxConfig(min_score=0.01, max_boxes=500,
                                                                                zoom_out=zoom_out))
                boxes_s = time.perf_counter() - t0
                polygons = outline_polygons(boxes)
                default = BoxConfig()  # what a user gets: AP above uses every box down to 0.01
                mine = [o for o in boxes if o.score >= default.min_score][:default.max_boxes]
                default_polygons = outline_polygons(mine)
                row["boxes"] = {
                    "tiles": len(guided.tiles), "pixels": len(guided.tiles) * bundle.image_size ** 2,
                    "outlines": [(o.score, o.extent.as_tuple()) for o in boxes],
                    "outline_share": union_area(polygons) / scene_area, "hit_share": row["guided"]["hit_share"],
                    "box_tiles": int(guided.timings["box_tiles"]), "boxes_s": boxes_s,
                    "seconds": guided_s + boxes_s, "per_2560_s": (guided_s + boxes_s) * SCENE_PX / (g.width * g.height),
                    "_polygons": polygons, "_hits": row["guided"]["_hits"],
                    "default_boxes": len(mine), "default_share": union_area(default_polygons) / scene_area,
                    "_default_polygons": default_polygons,
                }
            row["guided"]["seconds"] = guided_s
            row["guided"]["plan_s"] = guided.timings["plan_s"]
            row["guided"]["overview_s"] = guided.timings["overview_s"]
            row["guided"]["native_leaves"] = guided.plan.summary()["native_leaves"]
            row["guided"]["reasons"] = guided.plan.summary()["reasons"]
            out["queries"][label] = row
    return out


def methods_of(scenes_out: list[dict]) -> tuple[str, ...]:
    """The methods every scene has (boxes only with a box head)."""
    first = next(iter(scenes_out[0]["queries"].values())) if scenes_out else {}
    return tuple(m for m in METHODS if m in first)


def score_vhr(scenes_out: list[dict], truths: list[list[tuple[str, tuple]]]) -> dict:
    """AP, recall and area share per class and method, pooled over the scenes."""
    report = {}
    for label in QUERIES:
        per_method = {}
        for method in methods_of(scenes_out):
            detections, all_truths = [], []
            inside = total = hit_inside = 0
            shares, hit_shares, tiles, pixels = [], [], [], []
            default_inside, default_shares = 0, []
            for k, (scene, truth) in enumerate(zip(scenes_out, truths)):
                row = scene["queries"][label][method]
                mine = [b for name, b in truth if name == label]
                # boxes of other scenes must not match: offset each scene far apart
                shift = k * 1e7
                detections += [(s, (b[0] + shift, b[1], b[2] + shift, b[3])) for s, b in row["outlines"]]
                all_truths += [(b[0] + shift, b[1], b[2] + shift, b[3]) for b in mine]
                i, n = centre_recall(mine, row["_polygons"])
                inside, total = inside + i, total + n
                hit_inside += centre_recall(mine, [h.to_polygon() for h in row["_hits"]])[0]
                if "_default_polygons" in row:
                    default_inside += centre_recall(mine, row["_default_polygons"])[0]
                    default_shares.append(row["default_share"])
                shares.append(row["outline_share"])
                hit_shares.append(row["hit_share"])
                tiles.append(row["tiles"])
                pixels.append(row["pixels"])
            per_method[method] = {
                "objects": total,
                "ap50": average_precision(detections, all_truths) if all_truths else None,
                "recall_outlines": inside / total if total else None,
                "recall_hits": hit_inside / total if total else None,
                "outline_share": float(np.mean(shares)), "hit_share": float(np.mean(hit_shares)),
                "tiles": float(np.mean(tiles)), "pixels": float(np.mean(pixels)),
            }
            if default_shares:  # boxes at the user's defaults (min score 0.10, at most 100)
                per_method[method]["recall_default"] = default_inside / total if total else None
                per_method[method]["share_default"] = float(np.mean(default_shares))
        report[label] = per_method
    return report


def summarise(report: dict) -> dict:
    """Means over the classes with objects, and the guided/complexity figures relative to the native grid."""
    out = {}
    methods = [m for m in METHODS if m in next(iter(report.values()))]
    for method in methods:
        rows = [r[method] for r in report.values() if r[method]["objects"]]
        keys = ("ap50", "recall_outlines", "recall_hits", "outline_share", "hit_share", "tiles", "pixels",
                "recall_default", "share_default")
        out[method] = {key: float(np.mean([r[key] for r in rows if r.get(key) is not None]))
                       for key in keys if any(r.get(key) is not None for r in rows)}
    for method in [m for m in methods if m != "native"]:
        nat = out["native"]
        out[method]["vs_native"] = {
            "ap50": out[method]["ap50"] / nat["ap50"] if nat["ap50"] else None,
            "recall_outlines": out[method]["recall_outlines"] / nat["recall_outlines"] if nat["recall_outlines"] else None,
            "pixels": out[method]["pixels"] / nat["pixels"],
        }
    return out


def strip(scene: dict) -> dict:
    """A scene's figures without the geometries (for the JSON report)."""
    clean = {k: v for k, v in scene.items() if k != "queries"}
    clean["queries"] = {label: {m: {k: v for k, v in row.items() if not k.startswith("_") and k != "outlines"}
                                for m, row in methods.items()} for label, methods in scene["queries"].items()}
    return clean


def naip_agreement(scene: dict) -> dict:
    """Per query: area shares and how much of the native grid's outline area each DRIS covers."""
    from shapely.ops import unary_union

    out = {}
    for text, row in scene["queries"].items():
        native = unary_union(row["native"]["_polygons"]) if row["native"]["_polygons"] else None
        entry = {}
        for method in [m for m in METHODS if m in row]:
            mine = unary_union(row[method]["_polygons"]) if row[method]["_polygons"] else None
            covered = (mine.intersection(native).area / native.area) if (mine is not None and native is not None
                                                                         and native.area > 0) else None
            entry[method] = {"outline_share": row[method]["outline_share"], "hit_share": row[method]["hit_share"],
                             "tiles": row[method]["tiles"], "covers_native_outlines": covered}
        out[text] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder laid out like ../shared/data")
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the plugin's model)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench_locate", help="where the mosaics go")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench_locate.json")
    parser.add_argument("--per-side", type=int, default=4, help="images per side of a mosaic (4: 16 images)")
    parser.add_argument("--max-scenes", type=int, default=0, help="at most this many mosaics (0: all)")
    parser.add_argument("--share", type=float, default=0.3, help="DRIS budget as a share of the native grid's tiles")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--zoom-out", type=float, default=BoxConfig().zoom_out,
                        help="boxes: run the head on tiles up to this many times coarser than the finest")
    args = parser.parse_args(argv)
    bundle = ModelBundle.load(args.model or default_bundle_dir(), RuntimeOptions(threads=args.threads))
    started = time.perf_counter()
    images = held_back_images(args.data)
    scenes = write_mosaics(images, args.per_side, args.work)
    if args.max_scenes:
        scenes = scenes[:args.max_scenes]
    print(f"{len(images)} held-back VHR-10 images -> {len(scenes)} mosaics of {args.per_side} x {args.per_side}",
          flush=True)
    results = []
    for path, truth in scenes:
        t0 = time.perf_counter()
        results.append(run_scene(path, bundle, QUERIES, args.share, 4, args.zoom_out))
        r = results[-1]
        print(f"  {path.name}: {r['width']} x {r['height']} px, {len(truth)} boxes, native grid {r['native_tiles']} "
              f"tiles, budget {r['budget']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    report = score_vhr(results, [t for _, t in scenes])
    summary = summarise(report)
    naip = []
    for path in sorted((args.data / "scenes" / "naip").glob("*.tif")):
        scene = run_scene(path, bundle, {q: q for q in NAIP_QUERIES}, args.share, 4, args.zoom_out)
        naip.append({"file": path.name, "native_tiles": scene["native_tiles"], "budget": scene["budget"],
                     "queries": naip_agreement(scene)})
        print(f"  {path.name}: native grid {scene['native_tiles']} tiles, budget {scene['budget']}", flush=True)
    guided_rows = [q["guided"] for s in results for q in s["queries"].values()]
    plan_share = float(np.mean([r["plan_s"] / r["seconds"] for r in guided_rows]))
    compute_share = float(np.mean([(r["plan_s"] - r["overview_s"]) / r["seconds"] for r in guided_rows]))
    print("\nVHR-10 held-back mosaics, per class (AP50 / recall of centres in outlines / in 10 hits / outline share "
          "/ tiles):")
    for label, per in report.items():
        cells = []
        for m in per:
            r = per[m]
            ap = "  -  " if r["ap50"] is None else f"{r['ap50']:.3f}"
            rec = "  -  " if r["recall_outlines"] is None else f"{r['recall_outlines']:.2f}"
            hits = "  -  " if r["recall_hits"] is None else f"{r['recall_hits']:.2f}"
            cells.append(f"{m} {ap}/{rec}/{hits}/{100 * r['outline_share']:.1f}%/{r['tiles']:.0f}")
        print(f"  {label:18s} ({per['native']['objects']:3d} objects)  " + "   ".join(cells))
    print("\nmeans over classes:")
    for m in summary:
        s = summary[m]
        rel = s.get("vs_native")
        extra = "" if rel is None else (f"  vs native: AP x{rel['ap50']:.2f}, recall x{rel['recall_outlines']:.2f}, "
                                        f"pixels {100 * rel['pixels']:.0f} %")
        print(f"  {m:10s} AP50 {s['ap50']:.3f}  recall(outlines) {s['recall_outlines']:.3f}  recall(hits) "
              f"{s['recall_hits']:.3f}  outline share {100 * s['outline_share']:.2f} %  hit share "
              f"{100 * s['hit_share']:.1f} %  tiles {s['tiles']:.0f}" + extra)
    box_rows = [q["boxes"] for s in results for q in s["queries"].values() if "boxes" in q]
    if box_rows:
        summary["boxes"]["seconds_per_scene"] = float(np.mean([r["seconds"] for r in box_rows]))
        summary["boxes"]["seconds_per_2560"] = float(np.mean([r["per_2560_s"] for r in box_rows]))
        summary["boxes"]["box_tiles"] = float(np.mean([r["box_tiles"] for r in box_rows]))
        summary["boxes"]["native_tiles"] = float(np.mean([s["native_tiles"] for s in results]))
        print(f"  boxes at the defaults (min score {BoxConfig().min_score}, at most {BoxConfig().max_boxes}): "
              f"recall of centres {summary['boxes']['recall_default']:.3f}, share of the scene "
              f"{100 * summary['boxes']['share_default']:.2f} %")
        print(f"  boxes: {summary['boxes']['seconds_per_scene']:.2f} s per query and scene, "
              f"{summary['boxes']['seconds_per_2560']:.2f} s per 2560 x 2560 px; the head ran on "
              f"{summary['boxes']['box_tiles']:.0f} tiles, {summary['boxes']['tiles']:.0f} encoded of a native grid of "
              f"{summary['boxes']['native_tiles']:.0f} ({100 * summary['boxes']['tiles'] / summary['boxes']['native_tiles']:.0f} %)")
    print(f"  guided planning share of the job: {100 * plan_share:.1f} % (overview read, complexity, selection); "
          f"{100 * compute_share:.1f} % without the overview read")
    for scene in naip:
        print(f"\nNAIP {scene['file']} (native grid {scene['native_tiles']} tiles, budget {scene['budget']}):")
        for text, entry in scene["queries"].items():
            parts = []
            for m in entry:
                e = entry[m]
                cov = "-" if e["covers_native_outlines"] is None else f"{100 * e['covers_native_outlines']:.0f}%"
                parts.append(f"{m} outlines {100 * e['outline_share']:.1f}% hits {100 * e['hit_share']:.0f}% "
                             f"tiles {e['tiles']} covers-native {cov}")
            print(f"  {text:10s} " + " | ".join(parts))
    payload = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
               "model": bundle.name, "share": args.share, "zoom_out": args.zoom_out, "per_side": args.per_side,
               "seconds": time.perf_counter() - started,
               "vhr10": {"images": len(images), "scenes": [strip(s) for s in results], "per_class": report,
                         "summary": summary, "guided_plan_share": plan_share,
                         "guided_plan_compute_share": compute_share},
               "naip": naip}
    payload["locate"] = vars(LocateConfig.for_bundle(bundle))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                                   else str(v)), encoding="utf-8")
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
