#!/usr/bin/env python3
"""Check a plugin zip against the official QGIS plugin repository's rules (standard library only).

    python3 scripts/validate_plugin_zip.py dist/rs_vlm_plugin-0.2.0.zip [--offline] [--forbid models/ ...]

The rules (plugins.qgis.org, checked on upload): at most 25,000,000 bytes; one top folder whose
name is a Python package name, holding ``__init__.py`` with ``classFactory``, ``metadata.txt`` with
name, qgisMinimumVersion, description, about, version, author, email, repository and tracker, and
a LICENSE file (checked since 2024); no compiled or binary files, no ``__pycache__``, no hidden
files. ``--offline`` checks an offline zip (plugin and model): every rule but size and binaries.
Exit status 0 when the zip passes, 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import re
import sys
import zipfile
from pathlib import Path

MAX_BYTES = 25_000_000
REQUIRED_FIELDS = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                   "repository", "tracker")
LICENSE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE")
BINARY_SUFFIXES = {".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".exe", ".bin", ".onnx", ".npz", ".npy",
                   ".pt", ".pth", ".safetensors", ".ckpt", ".whl", ".egg", ".jar", ".class", ".o", ".a", ".lib"}
PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VERSION = re.compile(r"\d+(\.\d+){1,2}")


PLACEHOLDER_DOMAIN = re.compile(r"@(.+\.)?(example\.(org|com|net)|invalid|test|localhost|local)$", re.I)
"""Domains reserved for examples and tests (RFC 2606, 6761): a plugin's e-mail must not be one."""

def metadata_problems(text: str) -> list[str]:
    """What is wrong with a metadata.txt."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        return [f"metadata.txt does not parse: {exc}"]
    if "general" not in parser:
        return ["metadata.txt has no [general] section"]
    meta = parser["general"]
    problems = [f"metadata.txt lacks the field {name!r}" for name in REQUIRED_FIELDS if not meta.get(name, "").strip()]
    versions = {k: meta.get(k, "").strip() for k in ("qgisMinimumVersion", "qgisMaximumVersion")}
    for key, value in versions.items():
        if value and not VERSION.fullmatch(value):
            problems.append(f"metadata.txt {key}={value!r} is not a version like 3.22")
    if versions["qgisMaximumVersion"] and VERSION.fullmatch(versions["qgisMinimumVersion"] or "x") \
            and VERSION.fullmatch(versions["qgisMaximumVersion"]):
        if _v(versions["qgisMaximumVersion"]) < _v(versions["qgisMinimumVersion"]):
            problems.append("metadata.txt qgisMaximumVersion is below qgisMinimumVersion")
    if not versions["qgisMaximumVersion"] or _v(versions["qgisMaximumVersion"] or "0") < (4,):
        problems.append("metadata.txt has no qgisMaximumVersion of 4.x: QGIS 4 will not offer the plugin")
    email = meta.get("email", "")
    if email and "@" not in email:
        problems.append(f"metadata.txt email={email!r} is not an address")
    elif PLACEHOLDER_DOMAIN.search(email.strip()):
        problems.append(f"metadata.txt email={email!r} is a placeholder: nobody reads mail there")
    for key in ("repository", "tracker"):
        if meta.get(key) and not meta[key].strip().startswith(("http://", "https://")):
            problems.append(f"metadata.txt {key} is not a URL")
    return problems


def _v(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def zip_problems(path: Path, offline: bool = False, forbid: tuple[str, ...] = ()) -> list[str]:
    """Every rule ``path`` breaks (empty when it would be accepted)."""
    problems = []
    size = path.stat().st_size
    if not offline and size > MAX_BYTES:
        problems.append(f"the zip is {size:,} bytes; the repository takes at most {MAX_BYTES:,}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        return problems + [f"not a zip file: {exc}"]
    with zf:
        names = zf.namelist()
        if zf.testzip() is not None:
            problems.append(f"a damaged member: {zf.testzip()}")
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1 or any("/" not in n for n in names):
            return problems + [f"the zip must hold exactly one folder, it holds {sorted(tops)}"]
        folder = tops.pop()
        if not PACKAGE_NAME.fullmatch(folder):
            problems.append(f"the folder name {folder!r} is not a Python package name (letters, digits, _)")
        files = {n[len(folder) + 1:]: n for n in names if not n.endswith("/")}
        for rel in files:
            parts = rel.split("/")
            if "__pycache__" in parts:
                problems.append(f"{rel}: __pycache__ must not be shipped")
            elif any(p.startswith(".") for p in parts):
                problems.append(f"{rel}: hidden files must not be shipped")
            elif Path(rel).suffix.lower() in BINARY_SUFFIXES and not (offline and Path(rel).suffix.lower()
                                                                        in {".onnx", ".npy", ".npz"}):
                problems.append(f"{rel}: binary files are not accepted")
            if any(rel.startswith(prefix) for prefix in forbid):
                problems.append(f"{rel}: must not be in this zip")
        if "metadata.txt" not in files:
            problems.append("no metadata.txt in the plugin folder")
        else:
            problems += metadata_problems(zf.read(files["metadata.txt"]).decode("utf-8"))
            icon = _field(zf.read(files["metadata.txt"]).decode("utf-8"), "icon")
            if icon and icon not in files:
                problems.append(f"metadata.txt names the icon {icon!r}, which is not in the zip")
        if not any(name in files for name in LICENSE_NAMES):
            problems.append("no LICENSE file in the plugin folder")
        if "__init__.py" not in files:
            problems.append("no __init__.py in the plugin folder")
        elif not _defines(zf.read(files["__init__.py"]).decode("utf-8"), "classFactory"):
            problems.append("__init__.py defines no classFactory")
    return problems


def _field(text: str, key: str) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read_string(text)
    return parser["general"].get(key, "").strip() if "general" in parser else ""


def _defines(source: str, name: str) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.parse(source).body)


def main(argv: list[str] | None = None) -> int:
    """Check the zips named on the command line; 0 when all pass."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zips", nargs="+", type=Path)
    parser.add_argument("--offline", action="store_true", help="an offline zip: no size or binary rules")
    parser.add_argument("--forbid", nargs="*", default=[], help="path prefixes inside the folder that must be absent")
    args = parser.parse_args(argv)
    failed = False
    for path in args.zips:
        problems = zip_problems(path, args.offline, tuple(args.forbid))
        for problem in problems:
            print(f"{path}: {problem}")
        if not problems:
            print(f"{path}: OK ({path.stat().st_size:,} bytes)")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
