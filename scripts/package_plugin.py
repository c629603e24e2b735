"""The three artefacts of ``build.py package`` (standard library only, like build.py).

    dist/rs_vlm_plugin-<version>.zip          the plugin for the QGIS repository: code, styles,
                                              knowledge base, icon, LICENSE; no model, no weights
    dist/<model>-<model version>.zip          a model package (core/models/archive.py), a release asset
    dist/rs_vlm_plugin-<version>-offline.zip  plugin and model in one file, for machines without internet

The model package is written first: its size and SHA-256 go into the registry
(``resources/models.json``) that the plugin zips then carry.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rs_vlm_plugin.core.models.archive import sha256_of, write_member, write_model_package  # noqa: E402
from rs_vlm_plugin.core.models.registry import load_registry, update_entry  # noqa: E402

PLUGIN_FOLDER = "rs_vlm_plugin"
# Never in the repository zip: the model bundles, the training weights, build leftovers.
REPOSITORY_EXCLUDED_DIRS = ({"models"}, {"resources", "weights"})
EXCLUDED_PARTS = {"__pycache__", ".pytest_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo"}


def plugin_version(plugin: Path) -> str:
    """``version=`` of the plugin's metadata.txt."""
    meta = (plugin / "metadata.txt").read_text(encoding="utf-8")
    return next(line.split("=", 1)[1].strip() for line in meta.splitlines() if line.startswith("version="))


def plugin_files(plugin: Path) -> list[Path]:
    """The plugin's files for a zip: no caches, no hidden files, no models, no training weights."""
    kept = []
    for path in sorted(plugin.rglob("*")):
        rel = path.relative_to(plugin)
        if path.is_dir() or EXCLUDED_PARTS & set(rel.parts) or path.suffix in EXCLUDED_SUFFIXES:
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        if rel.parts[0] == "models":
            continue  # bundles travel as model packages (or explicitly, in the offline zip)
        if rel.parts[:2] == ("resources", "weights"):
            continue  # the training weights: the exporter's input, never needed by an installed plugin
        kept.append(path)
    return kept


def write_plugin_zip(plugin: Path, target: Path, extra: dict[str, Path],
                     bundles: dict[str, Path] | None = None) -> Path:
    """Zip the plugin folder as ``rs_vlm_plugin/...`` (atomically).

    Args:
        plugin: The plugin folder.
        target: The zip to write.
        extra: More files, ``{path inside the plugin folder: file}`` (fetched, never committed).
        bundles: Bundles to add as ``models/<name>/`` (the offline zip's model), ``{name: folder}``.
    """
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in plugin_files(plugin):
            _add(zf, path, f"{PLUGIN_FOLDER}/{path.relative_to(plugin).as_posix()}")
        for name, folder in (bundles or {}).items():
            for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
                _add(zf, path, f"{PLUGIN_FOLDER}/models/{name}/{path.name}")
        for inside, path in extra.items():
            _add(zf, path, f"{PLUGIN_FOLDER}/{inside}")
    os.replace(tmp, target)
    return target


def _add(zf: zipfile.ZipFile, path: Path, arcname: str) -> None:
    write_member(zf, arcname, path.read_bytes())


def package_all(plugin: Path, bundle: Path, dist: Path, extra: dict[str, Path] | None = None,
                record: bool = True) -> dict[str, Path]:
    """Write the model package, record it in the registry, then the repository and offline zips.

    Args:
        plugin: The plugin folder (its ``resources/models.json`` is updated).
        bundle: The bundle folder to package (its name must be in the registry).
        dist: Where the zips go.
        extra: Fetched files to add to both plugin zips (see :func:`write_plugin_zip`).
        record: Keep the registry updated with the new package (a release); False: the zips carry
            the updated registry and the plugin folder's file is put back as it was (a local
            install must not rewrite the released package's checksum in the checkout).

    Returns:
        ``{"repository": zip, "model": zip, "offline": zip}``.
    """
    dist.mkdir(parents=True, exist_ok=True)
    version = plugin_version(plugin)
    registry_file = plugin / "resources" / "models.json"
    released = registry_file.read_bytes()
    entry = load_registry(registry_file).get(bundle.name)
    model = write_model_package(bundle, dist / entry.file)
    update_entry(registry_file, entry.name, size=model.stat().st_size, sha256=sha256_of(model))
    try:
        extra = extra or {}
        repository = write_plugin_zip(plugin, dist / f"{PLUGIN_FOLDER}-{version}.zip", extra)
        offline = write_plugin_zip(plugin, dist / f"{PLUGIN_FOLDER}-{version}-offline.zip", extra,
                                   bundles={bundle.name: bundle})
    finally:
        if not record:
            registry_file.write_bytes(released)
    return {"repository": repository, "model": model, "offline": offline}
