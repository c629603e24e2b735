#!/usr/bin/env python3
"""Which wheels pip picks for the plugin's dependencies on each platform QGIS ships (a table).

    python3 scripts/check_wheels.py [--out out/wheels.json] [--markdown]

For every (platform, Python) pair it runs ``pip download --only-binary :all: --platform ...
--python-version ...`` of the dependency installer's requirements (``rs_vlm_plugin/deps``: the
exact pins widened to ranges up to them, so an older release is taken where the pinned one has no
wheel), resolved together as the installer resolves them, and reads the versions off the wheel
file names. Each pin is also tried alone (``--no-deps``) to show where the exact pin has a wheel.
NumPy is QGIS's own and never installed by the plugin; it is resolved here (1.x, 2.x on 3.13)
only so that the others resolve against it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rs_vlm_plugin.deps import REQUIREMENTS  # noqa: E402
from rs_vlm_plugin.deps.pip_install import install_spec  # noqa: E402

# pip widens a macOS tag to older macOS versions itself, but not a manylinux tag: name each glibc level.
LINUX = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
TARGETS = (  # (label, pip platform tags, Python)
    ("Windows x86_64 (OSGeo4W 3.34.6+, 3.40)", ["win_amd64"], "3.12"),
    ("macOS arm64 (official builds up to 3.40)", ["macosx_14_0_arm64"], "3.9"),
    ("macOS arm64", ["macosx_14_0_arm64"], "3.12"),
    ("macOS x86_64 (official builds up to 3.40)", ["macosx_12_0_x86_64"], "3.9"),
    ("macOS x86_64", ["macosx_12_0_x86_64"], "3.12"),
    ("Linux x86_64 (manylinux)", LINUX, "3.12"),
    ("Linux x86_64 (manylinux, QGIS 4 Flatpak)", LINUX, "3.13"),
)


def requirements(python: str) -> list[str]:
    """What the installer would ask pip for, NumPy first (QGIS's own, for the resolution only)."""
    numpy = "numpy>=2,<2.3" if python == "3.13" else "numpy>=1.24,<2"
    return [numpy] + [install_spec(r) for r in REQUIREMENTS if r.pip_name and r.pip_name != "numpy"]


def pip_download(specs: list[str], platforms: list[str], python: str, folder: Path, no_deps: bool) -> tuple[int, str]:
    command = [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--python-version", python,
               "--implementation", "cp", "--disable-pip-version-check", "--progress-bar", "off", "-d", str(folder)]
    for platform in platforms:
        command += ["--platform", platform]
    done = subprocess.run(command + (["--no-deps"] if no_deps else []) + specs, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr)[-1500:]


def versions_in(folder: Path) -> dict[str, str]:
    """``{distribution: version}`` of the wheels in a folder."""
    found = {}
    for wheel in folder.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        found[name.lower().replace("_", "-")] = version
    return found


def check(cache: Path) -> list[dict]:
    rows = []
    for label, platforms, python in TARGETS:
        folder = cache / f"{platforms[0]}-{python}"
        folder.mkdir(parents=True, exist_ok=True)
        specs = requirements(python)
        code, log = pip_download(specs, platforms, python, folder, no_deps=False)
        resolved = versions_in(folder)
        pins = {}
        for requirement in REQUIREMENTS:
            exact = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", requirement.pin or "")
            if exact:
                with tempfile.TemporaryDirectory() as tmp:
                    pins[exact.group(1)] = pip_download([requirement.pin], platforms, python, Path(tmp), True)[0] == 0
        rows.append({"target": label, "platform": platforms[0], "python": python, "resolved": code == 0,
                     "versions": {spec.split(">")[0].split("<")[0].split("=")[0]: resolved.get(
                         spec.split(">")[0].split("<")[0].split("=")[0]) for spec in specs},
                     "exact_pin_has_wheel": pins, "log": "" if code == 0 else log})
    return rows


def markdown(rows: list[dict]) -> str:
    names = list(rows[0]["versions"])
    lines = ["| platform | Python | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in rows:
        cells = []
        for name in names:
            version = row["versions"].get(name) or "no wheel"
            pinned = row["exact_pin_has_wheel"].get(name)
            cells.append(version + ("" if pinned in (None, True) else " (pin has none)"))
        lines.append(f"| {row['target']} | {row['python']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "wheels.json")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "wheel_check")
    args = parser.parse_args()
    rows = check(args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))
    return 0 if all(r["resolved"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
