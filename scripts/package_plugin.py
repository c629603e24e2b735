"""The three artefacts of ``build.py package`` (standard library only, like build.py).

    dist/rs_vlm_plugin-<version>.zip          the plugin for the QGIS repository: code, styles,
                                              knowledge base, icon, LICENSE; no model, no weights
    dist/<model>-<model version>.zip          a model package (core/models/archive.py), a release asset
    dist/rs_vlm_plugin-<version>-offline.zip  plugin and model in one file, for machines without internet

The model package is byte-reproducible (fixed member order, times and modes; a manifest without
build times or paths), so two builds of one commit give one SHA-256. ``package_all`` never
writes the registry (``resources/models.json``); ``release_all``, the release step, records the
package's size, SHA-256 and release URL there before the plugin zips are made.
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
from rs_vlm_plugin.core.models.registry import RELEASES_URL, load_registry, release_url, update_entry  # noqa: E402,E501

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


def package_all(plugin: Path, bundle: Path, dist: Path, extra: dict[str, Path] | None = None) -> dict:
    """Write the model package, then the repository and offline zips; the registry is left alone.

    The plugin zips carry the tracked registry as it is: a package build never changes which file
    a plugin accepts (only :func:`release_all` does). Packages are byte-reproducible, so the model
    package of a released commit has the registry's size and SHA-256; ``"registry_matches"`` says
    whether this one does.

    Args:
        plugin: The plugin folder.
        bundle: The bundle folder to package (its name must be in the registry).
        dist: Where the zips go.
        extra: Fetched files to add to both plugin zips (see :func:`write_plugin_zip`).

    Returns:
        ``{"repository": zip, "model": zip, "offline": zip, "registry_matches": bool}``.
    """
    dist.mkdir(parents=True, exist_ok=True)
    entry = load_registry(plugin / "resources" / "models.json").get(bundle.name)
    model = write_model_package(bundle, dist / entry.file)
    matches = (entry.size, entry.sha256) == (model.stat().st_size, sha256_of(model))
    return {**_plugin_zips(plugin, bundle, dist, extra or {}), "model": model, "registry_matches": matches}


def release_all(plugin: Path, bundle: Path, dist: Path, extra: dict[str, Path] | None = None,
                releases_url: str = RELEASES_URL) -> dict:
    """The release step: the model package, its registry entry (size, SHA-256 and release URL), then
    the plugin zips, which carry the new entry. The only writer of ``resources/models.json``.

    The URL is derived, not checked online: ``<releases_url>/<name>-<version>/<file>``, the release
    asset this package must be uploaded as (:func:`release_url`).

    Returns:
        ``{"repository": zip, "model": zip, "offline": zip, "url": str}``.
    """
    dist.mkdir(parents=True, exist_ok=True)
    registry_file = plugin / "resources" / "models.json"
    entry = load_registry(registry_file).get(bundle.name)
    model = write_model_package(bundle, dist / entry.file)
    url = release_url(releases_url, entry.name, entry.version, entry.file)
    update_entry(registry_file, entry.name, size=model.stat().st_size, sha256=sha256_of(model), url=url)
    return {**_plugin_zips(plugin, bundle, dist, extra or {}), "model": model, "url": url}


def _plugin_zips(plugin: Path, bundle: Path, dist: Path, extra: dict[str, Path]) -> dict[str, Path]:
    version = plugin_version(plugin)
    repository = write_plugin_zip(plugin, dist / f"{PLUGIN_FOLDER}-{version}.zip", extra)
    offline = write_plugin_zip(plugin, dist / f"{PLUGIN_FOLDER}-{version}-offline.zip", extra,
                               bundles={bundle.name: bundle})
    return {"repository": repository, "offline": offline}
