"""The core's wheel for the machines of a Dask cluster: ``python3 build.py wheel`` (standard library only).

    dist/rs_vlm_core-VERSION-py3-none-any.whl
        rs_vlm_plugin/__init__.py, __main__.py, LICENSE     (the package imports without QGIS)
        rs_vlm_plugin/core/**.py                            (the core: CLI, tasks, workers' code)
        rs_vlm_plugin/resources/models.json                 (``python -m rs_vlm_plugin models install``)
        rs_vlm_plugin/resources/grounding.json              (the things a caption may name only where seen)
        rs_vlm_core-VERSION.dist-info/                      (METADATA with the runtime requirements, RECORD, ...)

No QGIS shell, no torch side, no model: the model goes on shared storage or is installed on each
node with ``models install``. The archive is reproducible (sorted members, fixed timestamps), so
the same sources give the same wheel, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

DIST_NAME = "rs_vlm_core"
RUNTIME_REQUIREMENTS = ("numpy", "onnxruntime", "tokenizers", "shapely", "tqdm", "dask")
"""The requirements.txt lines a worker needs, taken with their version specifiers."""
EXTRA_REQUIREMENTS = ("rasterio>=1.3",)
"""Runtime requirements not in requirements.txt (Debian's python3-rasterio in the project's set-up)."""
CLIENT_EXTRA = ("GDAL>=3.4",)
"""Only the machine that writes the GeoPackage needs GDAL's Python bindings (``osgeo``)."""
EPOCH = (1980, 1, 1, 0, 0, 0)


def package_version(plugin: Path) -> str:
    """``__version__`` of ``rs_vlm_plugin/__init__.py``, read without importing it."""
    found = re.search(r'^__version__ = "([^"]+)"', (plugin / "__init__.py").read_text(encoding="utf-8"), re.M)
    if not found:
        raise SystemExit(f"No __version__ in {plugin / '__init__.py'}.")
    return found.group(1)


def requirements(requirements_txt: Path) -> list[str]:
    """The runtime requirements of the wheel, with the pins of ``requirements.txt``."""
    wanted = {}
    for line in requirements_txt.read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].strip()
        name = re.match(r"[A-Za-z0-9_.\-]+", spec)
        if name and name.group(0).lower() in RUNTIME_REQUIREMENTS:
            wanted[name.group(0).lower()] = spec
    missing = set(RUNTIME_REQUIREMENTS) - set(wanted)
    if missing:
        raise SystemExit(f"requirements.txt does not name {sorted(missing)}.")
    return [wanted[n] for n in RUNTIME_REQUIREMENTS] + list(EXTRA_REQUIREMENTS)


def package_files(plugin: Path) -> list[Path]:
    """The files of ``rs_vlm_plugin`` that go into the wheel."""
    files = [plugin / "__init__.py", plugin / "__main__.py", plugin / "LICENSE", plugin / "resources" / "models.json",
             plugin / "resources" / "grounding.json"]
    files += [p for p in (plugin / "core").rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def metadata(version: str, requires: list[str]) -> str:
    """The METADATA file (core metadata 2.1)."""
    lines = ["Metadata-Version: 2.1", f"Name: {DIST_NAME.replace('_', '-')}", f"Version: {version}",
             "Summary: RS-VLM core: caption and search aerial imagery with a small ONNX vision-language model "
             "(command line and Dask workers, no QGIS)",
             "License: MIT", "Requires-Python: >=3.9", *(f"Requires-Dist: {r}" for r in requires),
             "Provides-Extra: client", *(f'Requires-Dist: {r} ; extra == "client"' for r in CLIENT_EXTRA)]
    return "\n".join(lines) + "\n"


def build_wheel(root: Path, dist: Path) -> Path:
    """Write ``dist/rs_vlm_core-VERSION-py3-none-any.whl`` from the checkout at ``root``; returns it."""
    plugin = root / "rs_vlm_plugin"
    version = package_version(plugin)
    info = f"{DIST_NAME}-{version}.dist-info"
    members: list[tuple[str, bytes]] = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in package_files(plugin)]
    members += [
        (f"{info}/METADATA", metadata(version, requirements(root / "requirements.txt")).encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: rs-vlm build.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt", b"[console_scripts]\nrs-vlm = rs_vlm_plugin.core.cli:main\n"),
        (f"{info}/top_level.txt", b"rs_vlm_plugin\n"),
    ]
    record = [f"{name},sha256={_urlsafe_sha256(data)},{len(data)}" for name, data in members] + [f"{info}/RECORD,,"]
    members.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    dist.mkdir(parents=True, exist_ok=True)
    wheel = dist / f"{DIST_NAME}-{version}-py3-none-any.whl"
    temporary = wheel.with_name(wheel.name + ".part")
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            entry = zipfile.ZipInfo(name, EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    temporary.replace(wheel)
    return wheel


def _urlsafe_sha256(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
