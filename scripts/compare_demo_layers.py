"""Run the demo job into a GeoPackage, or compare two such GeoPackages layer by layer.

    python scripts/compare_demo_layers.py run OUT_DIR      scripts/demo.py --out OUT_DIR (OUT_DIR/demo.gpkg)
    python scripts/compare_demo_layers.py compare A.gpkg B.gpkg [--tolerance 1e-6]

`run` starts `scripts/demo.py` as its own process, so it exercises whatever the checkout holds.
`compare` reads both files with OGR alone (it imports nothing of the plugin), so the same script
judges a GeoPackage written before a restructuring against one written after: the same layers,
the same fields, the same number of features in the same order, the same texts, and numbers and
geometry coordinates equal within the tolerance. Timings are not written to the layers, so every
field takes part. Exit status 0 when they match, 1 with one line per difference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(out: Path) -> int:
    """Run the demo job (as `build.py demo` does) with its outputs in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT)}
    python = ROOT / ".venv" / "bin" / "python"
    cmd = [str(python if python.exists() else sys.executable), str(ROOT / "scripts" / "demo.py"), "--out", str(out)]
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def _coordinates(geometry) -> list[tuple[float, ...]]:
    """Every vertex of an OGR geometry, in order, as tuples."""
    if geometry is None:
        return []
    if geometry.GetGeometryCount():
        return [xy for i in range(geometry.GetGeometryCount()) for xy in _coordinates(geometry.GetGeometryRef(i))]
    return [tuple(geometry.GetPoint(i)) for i in range(geometry.GetPointCount())]


def read_layers(path: Path) -> dict[str, dict]:
    """Each layer's fields, geometry type and features (fid order) of a GeoPackage."""
    from osgeo import ogr

    ogr.UseExceptions()
    dataset = ogr.Open(str(path))
    if dataset is None:
        raise SystemExit(f"{path} is not a GeoPackage OGR can open.")
    layers = {}
    for index in range(dataset.GetLayerCount()):
        layer = dataset.GetLayerByIndex(index)
        definition = layer.GetLayerDefn()
        fields = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
        features = []
        for feature in layer:
            geometry = feature.GetGeometryRef()
            features.append({
                "attributes": [feature.GetField(name) for name in fields],
                "type": geometry.GetGeometryName() if geometry is not None else None,
                "coordinates": _coordinates(geometry),
            })
        layers[layer.GetName()] = {"fields": fields, "geom_type": layer.GetGeomType(), "features": features}
    return layers


def _same_value(a, b, tolerance: float) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) <= tolerance
    return a == b


def compare(path_a: Path, path_b: Path, tolerance: float = 1e-6) -> list[str]:
    """The differences between two GeoPackages, one sentence each (empty when they match)."""
    a, b = read_layers(path_a), read_layers(path_b)
    problems = []
    if sorted(a) != sorted(b):
        problems.append(f"layers differ: {sorted(a)} vs {sorted(b)}")
    for name in sorted(set(a) & set(b)):
        la, lb = a[name], b[name]
        if la["fields"] != lb["fields"]:
            problems.append(f"{name}: fields differ: {la['fields']} vs {lb['fields']}")
            continue
        if la["geom_type"] != lb["geom_type"]:
            problems.append(f"{name}: geometry type {la['geom_type']} vs {lb['geom_type']}")
        if len(la["features"]) != len(lb["features"]):
            problems.append(f"{name}: {len(la['features'])} vs {len(lb['features'])} features")
            continue
        for number, (fa, fb) in enumerate(zip(la["features"], lb["features"]), start=1):
            for field, va, vb in zip(la["fields"], fa["attributes"], fb["attributes"]):
                if not _same_value(va, vb, tolerance):
                    problems.append(f"{name} feature {number} {field}: {va!r} vs {vb!r}")
            if fa["type"] != fb["type"] or len(fa["coordinates"]) != len(fb["coordinates"]):
                problems.append(f"{name} feature {number}: geometry {fa['type']}/{len(fa['coordinates'])} "
                                f"vs {fb['type']}/{len(fb['coordinates'])} vertices")
                continue
            worst = max((abs(p - q) for ca, cb in zip(fa["coordinates"], fb["coordinates"])
                         for p, q in zip(ca, cb)), default=0.0)
            if worst > tolerance:
                problems.append(f"{name} feature {number}: vertices differ by up to {worst:g}")
    return problems


def summary(path: Path) -> str:
    """One line per layer: its name and feature count."""
    return "\n".join(f"  {name}: {len(layer['features'])} features, fields {', '.join(layer['fields'])}"
                     for name, layer in sorted(read_layers(path).items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the demo job into OUT/demo.gpkg")
    p.add_argument("out", type=Path)
    p = sub.add_parser("compare", help="compare two GeoPackages")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    if args.command == "run":
        code = run_demo(args.out)
        if code == 0:
            print(f"{args.out / 'demo.gpkg'}:\n{summary(args.out / 'demo.gpkg')}")
        return code
    problems = compare(args.a, args.b, args.tolerance)
    print(f"{args.a}:\n{summary(args.a)}")
    for line in problems:
        print(line)
    print(f"{'SAME' if not problems else 'DIFFERENT'}: {args.a} vs {args.b} "
          f"({len(problems)} differences, tolerance {args.tolerance:g})")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
