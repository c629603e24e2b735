"""The registry of installable models (``resources/models.json``) and where models are installed.

    {"format": "rs-vlm-model-registry", "version": 1,
     "base_url": "https://github.com/rs-vlm/rs-vlm/releases/download/models/",
     "models": [{"name": "rs-vlm-lite0", "version": "1.0.0", "file": "rs-vlm-lite0-1.0.0.zip",
                 "size": 61234567, "sha256": "...", "format_version": 2, "licence": "...",
                 "description": "...",
                 "url": "https://github.com/rs-vlm/rs-vlm/releases/download/rs-vlm-lite0-1.0.0/rs-vlm-lite0-1.0.0.zip"}]}

A model's URL is its ``url``, written by the release step (``build.py release``) as the release
asset ``<releases>/<name>-<version>/<file>`` (:func:`release_url`), else ``base_url + file``; a
mirror (Settings, ``--mirror``) serves ``<mirror>/<file>`` but never changes the size or hash, so a
mirror cannot change what is installed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import RsVlmError

REGISTRY_FORMAT = "rs-vlm-model-registry"
RELEASES_URL = "https://github.com/rs-vlm/rs-vlm/releases/download"
"""Where the project's release assets are (the repository of ``metadata.txt``)."""
MODELS_ENV = "RSVLM_MODELS_DIR"


@dataclass(frozen=True)
class ModelEntry:
    """One installable model.

    Attributes:
        name: The bundle's folder name once installed (``rs-vlm-lite0``).
        version: The model package's version.
        file: The package's file name, appended to the base URL or mirror.
        size: The package's size in bytes.
        sha256: The package's SHA-256 (64 hex digits).
        format_version: The bundle format version the model needs (``bundle.SUPPORTED_VERSIONS``).
        licence: The model's terms, in a few words.
        description: One line for the user.
        url: The release asset's URL (written by the release step); "" means ``base_url + file``.
    """

    name: str
    version: str
    file: str
    size: int
    sha256: str
    format_version: int
    licence: str = ""
    description: str = ""
    url: str = ""

    def url_under(self, base_url: str) -> str:
        """The package's URL under ``base_url`` (a release or a mirror)."""
        return base_url.rstrip("/") + "/" + self.file


@dataclass(frozen=True)
class Registry:
    """The models one can install, and where their packages are published."""

    base_url: str
    models: tuple[ModelEntry, ...]

    def get(self, name: str) -> ModelEntry:
        """The entry of ``name``; a sentence naming the known models when there is none."""
        for entry in self.models:
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self.models) or "none"
        raise RsVlmError(f"There is no model called {name!r} in the registry (known: {known}); "
                         "check the name with `python -m rs_vlm_plugin models list`.")

    def url_of(self, entry: ModelEntry, mirror: str = "") -> str:
        """Where to download ``entry``: from ``mirror`` when one is set, else from the release."""
        if mirror.strip():
            return entry.url_under(mirror.strip())
        return entry.url or entry.url_under(self.base_url)


def registry_path() -> Path:
    """The registry shipped with the plugin."""
    return Path(__file__).resolve().parents[2] / "resources" / "models.json"


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read a registry file (default the plugin's own).

    Raises:
        RsVlmError: The file is missing or not a registry (a sentence).
    """
    path = Path(path) if path else registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RsVlmError(f"The model registry {path} cannot be read ({exc}); reinstall the plugin.") from exc
    if data.get("format") != REGISTRY_FORMAT:
        raise RsVlmError(f"{path} is not an RS-VLM model registry; reinstall the plugin.")
    fields = set(ModelEntry.__dataclass_fields__)
    models = tuple(ModelEntry(**{k: v for k, v in m.items() if k in fields}) for m in data.get("models", []))
    return Registry(str(data.get("base_url", "")), models)


def release_url(releases_url: str, name: str, version: str, file: str) -> str:
    """The release asset of a model package: ``<releases_url>/<name>-<version>/<file>`` (one tag per model version)."""
    return f"{releases_url.rstrip('/')}/{name}-{version}/{file}"


def update_entry(path: Path, name: str, **values) -> None:
    """Set fields of one entry of a registry file (the release step writes size, hash and URL)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    entry = next((m for m in data["models"] if m["name"] == name), None)
    if entry is None:
        raise KeyError(f"{name} is not in {path}")
    entry.update(values)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def user_models_dir() -> Path:
    """Where the command line installs models: ``$RSVLM_MODELS_DIR``, else the user's data folder.

    (Inside QGIS the shell passes its own folder, ``<profile>/rs_vlm_models`` by default.)
    """
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV]).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "rs-vlm" / "models"
