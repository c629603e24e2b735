"""Issue 20's three checks of the default model on the demo scene (NEON forest with a road), printed.

- the global caption names the forest and the road;
- no object caption names a river, a villa or a building;
- Classify's whole view (the knowledge base's scene concepts, as a user gets it without a class
  list) ranks forest first.

Usage: ``.venv/bin/python scripts/demo_checks.py [--model DIR] [--json FILE]``; exit 0 when all hold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rs_vlm_plugin.core.bundle import ModelBundle, default_bundle_dir  # noqa: E402
from rs_vlm_plugin.core.jobs.classify import classify  # noqa: E402
from rs_vlm_plugin.core.jobs.describe import describe  # noqa: E402
from rs_vlm_plugin.core.jobs.grounding import named_things  # noqa: E402
from rs_vlm_plugin.core.raster import open_raster  # noqa: E402

FORBIDDEN = {"river", "villa", "building"}
FORESTS = ("forest", "woodland", "conifer", "deciduous", "trees", "woods")


def demo_checks(bundle: ModelBundle, scene: Path) -> dict:
    """The captions, the whole view's classes and whether each check holds."""
    with open_raster(scene) as source:
        described = describe(source, bundle)
        classified = classify(source, bundle)
    global_caption = next(r.caption for r in described.records if r.level == "global")
    objects = [r.caption for r in described.records if r.level == "object"]
    bad = [c for c in objects if named_things(c) & FORBIDDEN]
    first = classified.scene[0][0] if classified.scene else ""
    return {"global_caption": global_caption,
            "global_names_forest_and_road": {"forest", "road"} <= named_things(global_caption),
            "object_captions": len(objects),
            "object_captions_naming_river_villa_building": bad,
            "no_object_caption_names_river_villa_building": not bad,
            "region_captions": [r.caption for r in described.records if r.level == "region"],
            "classify_whole_view": classified.scene,
            "classify_forest_first": any(w in first.lower() for w in FORESTS)}


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--scene", type=Path, default=ROOT / ".cache" / "samples" / "demo_scene.tif")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    got = demo_checks(ModelBundle.load(args.model or default_bundle_dir()), args.scene)
    print(json.dumps(got, indent=1))
    if args.json:
        args.json.write_text(json.dumps(got, indent=1), encoding="utf-8")
    checks = ("global_names_forest_and_road", "no_object_caption_names_river_villa_building", "classify_forest_first")
    for key in checks:
        print(f"{key}: {'yes' if got[key] else 'NO'}")
    return 0 if all(got[k] for k in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
