"""The plugin's settings in one typed place, kept in QgsSettings under ``rs_vlm/``.

The dock fills a :class:`PluginSettings` from :meth:`PluginSettings.load`, changes it as the
user works, and calls :meth:`PluginSettings.save`; nothing else reads QgsSettings directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from qgis.core import QgsSettings

from ..core.bundle import DEFAULT_MODEL_NAME, default_bundle_dir, models_dir
from ..core.models.install import installed_models

PREFIX = "rs_vlm/"
"""Key prefix of every RS-VLM setting."""

DEVICES = ("auto", "cpu", "cuda")
MODES = ("describe", "search", "classify", "ask")
SCOPES = ("visible", "layer", "selection")
QUERY_HISTORY_SIZE = 20


@dataclass
class PluginSettings:
    """Everything the plugin remembers between sessions.

    Attributes:
        models_folder: The folder of downloaded and imported model bundles (one sub-folder each); empty
            for ``<QGIS settings folder>/rs_vlm_models`` (see :func:`models_root`).
        model_mirror: A base URL that model downloads come from instead of the project's releases
            (the registry's sizes and SHA-256 still apply); empty for the releases.
        model: Name of the chosen bundle; empty for the default model (``rs-vlm-lite0``).
        device: "auto" (CUDA when onnxruntime offers it), "cpu" or "cuda".
        threads: onnxruntime intra-op threads; 0 lets onnxruntime decide.
        output_folder: Where runs of an unsaved project are written; empty until the user chooses.
        mode: The dock's mode: "describe", "search", "classify" or "ask".
        max_tiles: The dock's DRIS tile budget.
        scope: What the dock works on: "visible" (canvas extent), "layer" (whole layer) or
            "selection" (selected polygons).
        show_plan: Whether the dock also writes the DRIS plan layer ("show where compute went").
        max_hits: Search hits kept.
        classes: The classify mode's comma-separated class list; empty for the scene concepts.
        query_history: The last distinct queries, newest first (at most ``QUERY_HISTORY_SIZE``).
    """

    models_folder: str = ""
    model_mirror: str = ""
    model: str = ""
    device: str = "auto"
    threads: int = 0
    output_folder: str = ""
    mode: str = "describe"
    max_tiles: int = 48
    scope: str = "visible"
    show_plan: bool = False
    max_hits: int = 10
    classes: str = ""
    query_history: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Settings written by hand or by an older version must not stop the plugin: values out
        # of range fall back to the defaults instead of raising.
        for name, allowed in (("device", DEVICES), ("mode", MODES), ("scope", SCOPES)):
            if getattr(self, name) not in allowed:
                setattr(self, name, _default(name))
        self.threads = max(0, int(self.threads))
        for name in ("max_tiles", "max_hits"):
            if int(getattr(self, name)) < 1:
                setattr(self, name, _default(name))
            setattr(self, name, int(getattr(self, name)))
        self.query_history = _distinct(self.query_history)[:QUERY_HISTORY_SIZE]

    @property
    def model_name(self) -> str:
        """The chosen bundle's name, the default model's when none is chosen."""
        return self.model or DEFAULT_MODEL_NAME

    def add_query(self, query: str) -> None:
        """Put a query at the front of the history (once; the oldest beyond 20 drop out)."""
        query = query.strip()
        if not query:
            return
        self.query_history = _distinct([query, *self.query_history])[:QUERY_HISTORY_SIZE]

    @classmethod
    def load(cls, settings: QgsSettings | None = None) -> "PluginSettings":
        """The settings stored in QgsSettings (the defaults for anything not stored).

        Args:
            settings: Where to read; default a new ``QgsSettings()`` (the active profile).
        """
        store = settings if settings is not None else QgsSettings()
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = PREFIX + f.name
            if not store.contains(key):
                continue
            try:
                values[f.name] = _typed(store.value(key), f.name)
            except (TypeError, ValueError):
                continue  # an unreadable value (edited by hand): that setting's default
        return cls(**values)

    def save(self, settings: QgsSettings | None = None) -> None:
        """Store every field in QgsSettings under ``rs_vlm/``.

        Args:
            settings: Where to write; default a new ``QgsSettings()`` (the active profile).
        """
        store = settings if settings is not None else QgsSettings()
        for f in fields(self):
            value = getattr(self, f.name)
            store.setValue(PREFIX + f.name, list(value) if isinstance(value, list) else value)
        store.sync()


def _default(name: str) -> Any:
    """The default value of a PluginSettings field."""
    return PluginSettings.__dataclass_fields__[name].default


_KINDS = {"threads": int, "max_tiles": int, "max_hits": int, "show_plan": bool, "query_history": list}


def _typed(value: Any, name: str) -> Any:
    """A stored value as the field's type (QSettings returns strings from .ini files)."""
    kind = _KINDS.get(name, str)
    if kind is bool:
        return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
    if kind is int:
        return int(value)
    if kind is list:
        if value is None or value == "":
            return []
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return "" if value is None else str(value)


def _distinct(items: list[str]) -> list[str]:
    """Items without repeats (case-sensitive, stripped), in first-seen order, empties dropped."""
    seen: set[str] = set()
    kept = []
    for item in items:
        item = str(item).strip()
        if item and item not in seen:
            seen.add(item)
            kept.append(item)
    return kept


def models_root(settings: PluginSettings) -> Path:
    """Where models are downloaded, installed and imported: ``settings.models_folder``, else
    ``<QGIS settings folder>/rs_vlm_models`` (outside the plugin, so a plugin update keeps them)."""
    if settings.models_folder:
        return Path(settings.models_folder).expanduser()
    from qgis.core import QgsApplication

    return Path(QgsApplication.qgisSettingsDirPath()) / "rs_vlm_models"


def available_models(settings: PluginSettings) -> list[tuple[str, Path]]:
    """The valid model bundles: the plugin's own (offline zip, checkout), then those in :func:`models_root`.

    A bundle is a folder with a ``manifest.json``. A name found in both places is listed once,
    the plugin's own bundle first.

    Args:
        settings: The plugin settings (for ``models_folder``).

    Returns:
        ``(name, folder)`` pairs, sorted by name within each place.
    """
    return [(m.name, m.folder) for m in installed_models(models_dir(), models_root(settings))]


def chosen_model_dir(settings: PluginSettings) -> Path | None:
    """The folder of the chosen bundle, or None when it is not among :func:`available_models`."""
    return dict(available_models(settings)).get(settings.model_name)


def default_model_dir(settings: PluginSettings | None = None) -> Path:
    """The default model's folder: the plugin's own or the installed one; where it should be when
    neither exists (loading it then says how to install it)."""
    settings = settings if settings is not None else PluginSettings.load()
    return dict(available_models(settings)).get(DEFAULT_MODEL_NAME) or default_bundle_dir()
