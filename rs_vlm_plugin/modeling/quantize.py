"""Shrink a model bundle: int8 or float16 weights for its ONNX files, measured against the original.

    python -m rs_vlm_plugin.modeling.quantize BUNDLE --out SHRUNK [--image fp16] [--text int8]
        [--decoder int8] [--report out/shrink.json]

Formats per ONNX file:

- ``fp32``: copied as it is.
- ``fp16``: float16 *storage*: each large float32 weight is stored as float16 and cast back to
  float32 by a ``Cast`` node in the graph, which onnxruntime folds at load time. Half the bytes;
  the computation stays float32, so the only error is the weights' rounding (and every provider
  runs it).
- ``int8``: onnxruntime's dynamic quantisation (``quantize_dynamic``, per channel) of MatMul, Gemm
  and Gather weights (int8 weights, activations quantised per batch at run time); a quarter of the
  bytes of those weights, the rest stays float32.
- ``int8+fp16``: int8, then float16 storage of the float32 weights left.
- ``gather8+fp16``: only the embedding tables (Gather) in int8 -- weight-only, no activation is
  quantised, so nearly lossless -- and float16 storage of the rest.

The shrunk bundle is written into a new folder (atomically: a temporary folder renamed at the
end) with the manifest's ``quantization`` entry saying what was done and how close it stays to the
original: embeddings of tiles and texts (largest absolute difference, smallest cosine), the
text-to-tile ranking, and the captions. Needs onnx and onnxruntime (not torch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .onnx_passes import sort_nodes

FORMATS = ("fp32", "fp16", "int8", "int8+fp16", "gather8+fp16")
FP16_MIN_ELEMENTS = 1024  # smaller tensors (biases, norms) stay float32: no size to win, some precision to lose
PARITY_TEXTS = ("a paved road through a forest", "storage tanks next to a river", "a dense residential area",
                "an airport with planes", "a beach", "farmland with a few houses", "a parking lot full of cars",
                "a river crossing a bridge")


def fp16_storage(model):
    """``model`` with its large float32 initializers stored as float16 behind a Cast to float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < FP16_MIN_ELEMENTS:
            continue
        values = numpy_helper.to_array(init)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), name + "__fp16"))
        casts.append(helper.make_node("Cast", [name + "__fp16"], [name], to=TensorProto.FLOAT,
                                      name=name + "__cast"))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    sort_nodes(model.graph)  # after int8 quantisation, its nodes may follow the If branch that reads them
    onnx.checker.check_model(model)
    return model


def stable_figures(value, digits: int = 2):
    """Measured floats of a manifest to ``digits`` significant digits (nested dicts and lists too).

    A manifest is packaged, and a package must come out byte for byte the same from the same
    commit; the last digits of a parity figure move with the machine's thread count.
    """
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: stable_figures(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [stable_figures(v, digits) for v in value]
    return value


def shrink_file(source: Path, target: Path, fmt: str) -> None:
    """Write ``source`` in format ``fmt`` (one of :data:`FORMATS`) to ``target``."""
    import onnx

    if fmt == "fp32":
        shutil.copyfile(source, target)
        return
    if fmt.startswith(("int8", "gather8")):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        ops = ["Gather"] if fmt.startswith("gather8") else ["MatMul", "Gemm", "Gather"]
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                         per_channel=True, extra_options={"EnableSubgraph": True})  # the image graph's gated tier
        source = target
    if fmt.endswith("fp16"):
        model = fp16_storage(onnx.load(str(source)))
        onnx.save(model, str(target))


def shrink_bundle(bundle: Path, out: Path, formats: dict[str, str], tiles: np.ndarray | None = None) -> dict:
    """Copy ``bundle`` to ``out`` with its ONNX files in ``formats`` (``{"image_encoder": "fp16", ...}``),
    measure sizes and parity, and record both in the new manifest.

    Args:
        bundle: The float32 bundle.
        out: The new bundle folder (must not exist).
        formats: Format per manifest key: "image_encoder", "text_encoder", "decoder".
        tiles: uint8 (N, S, S, 3) tiles for the parity check; default seeded synthetic scenes.

    Returns:
        The report: sizes per file before and after, parity figures, seconds.
    """
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder for the shrunk bundle")
    started = time.perf_counter()
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".shrinking-", dir=out.parent))
    try:
        onnx_files = {key: manifest[key]["file"] for key in ("image_encoder", "text_encoder", "decoder")
                      if key in manifest}
        for path in sorted(p for p in bundle.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.name not in onnx_files.values():
                shutil.copyfile(path, work / path.name)
        for key, file in onnx_files.items():
            shrink_file(bundle / file, work / file, formats.get(key, "fp32"))
        sizes = {p.name: {"before": p.stat().st_size, "after": (work / p.name).stat().st_size}
                 for p in sorted(bundle.iterdir()) if p.is_file() and not p.name.startswith(".")}
        parity = measure_parity(bundle, work, tiles)
        report = {"formats": {k: formats.get(k, "fp32") for k in onnx_files}, "sizes": sizes,
                  "total_before": sum(s["before"] for s in sizes.values()),
                  "total_after": sum(s["after"] for s in sizes.values()), "parity": parity}
        manifest["quantization"] = {"formats": report["formats"], "parity": stable_figures(parity),
                                    "source_total_bytes": report["total_before"]}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def synthetic_tiles(size: int, count: int = 12, seed: int = 0) -> np.ndarray:
    """Seeded tiles with structure (stripes, blocks, smooth shading, noise) for parity checks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    tiles = []
    for i in range(count):
        base = rng.uniform(40, 200, 3)
        pattern = np.sin((xx * rng.uniform(2, 30) + yy * rng.uniform(2, 30)) * np.pi)[..., None] * rng.uniform(10, 60)
        blocks = ((xx * rng.integers(2, 8)).astype(int) + (yy * rng.integers(2, 8)).astype(int)) % 2
        tile = base + pattern + blocks[..., None] * rng.uniform(-50, 50, 3) + rng.normal(0, 8, (size, size, 3))
        tiles.append(np.clip(tile, 0, 255).astype(np.uint8))
    return np.stack(tiles)


def raster_tiles(path: Path, size: int, grid: int = 4) -> np.ndarray:
    """A ``grid`` x ``grid`` of tiles covering a raster, read as the plugin reads them."""
    from ..core.geometry import Extent
    from ..core.raster import open_raster

    with open_raster(path) as source:
        e = source.georef.extent
        w, h = (e.xmax - e.xmin) / grid, (e.ymax - e.ymin) / grid
        return np.stack([source.read(Extent(e.xmin + i * w, e.ymax - (j + 1) * h, e.xmin + (i + 1) * w, e.ymax - j * h),
                                     size, size) for j in range(grid) for i in range(grid)])


def measure_parity(reference_dir: Path, shrunk_dir: Path, tiles: np.ndarray | None = None) -> dict:
    """How close the shrunk bundle stays to the reference on tiles and texts."""
    from ..core.bundle import ModelBundle, RuntimeOptions

    ref = ModelBundle.load(reference_dir, RuntimeOptions("cpu"))
    new = ModelBundle.load(shrunk_dir, RuntimeOptions("cpu"))
    tiles = synthetic_tiles(ref.image_size) if tiles is None else tiles
    out = {"tiles": int(len(tiles)), "texts": len(PARITY_TEXTS)}
    a, b = ref.encode_tiers(tiles), new.encode_tiers(tiles)
    for key in ("embedding", "regions", "objects"):
        out[f"image_{key}"] = _compare(a[key].reshape(-1, a[key].shape[-1]), b[key].reshape(-1, b[key].shape[-1]))
    ta, tb = ref.encode_texts(list(PARITY_TEXTS)), new.encode_texts(list(PARITY_TEXTS))
    out["text_embedding"] = _compare(ta, tb)
    sim_a, sim_b = a["embedding"] @ ta.T, b["embedding"] @ tb.T
    out["text_to_tile_top1_agreement"] = float((sim_a.argmax(0) == sim_b.argmax(0)).mean())
    out["tile_to_text_top1_agreement"] = float((sim_a.argmax(1) == sim_b.argmax(1)).mean())
    out["similarity_max_abs_diff"] = float(np.abs(sim_a - sim_b).max())
    if ref.has_decoder and new.has_decoder:
        caps_a, caps_b = ref.caption(a), new.caption(b)
        out["captions_identical"] = float(np.mean([x == y for x, y in zip(caps_a, caps_b)]))
        out["caption_examples"] = [[x, y] for x, y in list(zip(caps_a, caps_b))[:3]]
    return out


def _compare(x: np.ndarray, y: np.ndarray) -> dict:
    cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)
    return {"max_abs_diff": float(np.abs(x - y).max()), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def main(argv: list[str] | None = None) -> int:
    """Command line; prints the report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    for key, default in (("image", "fp16"), ("text", "int8"), ("decoder", "int8")):
        parser.add_argument(f"--{key}", choices=FORMATS, default=default)
    parser.add_argument("--raster", type=Path, action="append", default=[],
                        help="real imagery for the parity check (4 x 4 tiles of each; default: synthetic tiles)")
    parser.add_argument("--report", type=Path, default=None, help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    size = int(json.loads((args.bundle / "manifest.json").read_text())["image_encoder"]["image_size"])
    tiles = np.concatenate([raster_tiles(p, size) for p in args.raster] + [synthetic_tiles(size)])
    report = shrink_bundle(args.bundle, args.out, {"image_encoder": args.image, "text_encoder": args.text,
                                                   "decoder": args.decoder}, tiles)
    report["parity"]["rasters"] = [str(p) for p in args.raster]
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
