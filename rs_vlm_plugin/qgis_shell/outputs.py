"""Where the panel's and toolbar's runs write their GeoPackages.

One GeoPackage per run, named by kind and time, in ``<project folder>/rs_vlm_runs/`` when the
project is saved, otherwise in the output folder the user chose once (``PluginSettings.output_folder``).
An existing file is never overwritten: a counter is added to the name instead.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from qgis.core import QgsProject

from ..core.errors import RsVlmError
from .settings import PluginSettings

RUNS_FOLDER = "rs_vlm_runs"
"""Sub-folder of a saved project's folder that holds its runs."""


def runs_folder(project: QgsProject | None, settings: PluginSettings) -> Path | None:
    """The folder runs go to: beside the saved project, else the chosen output folder, else None.

    Args:
        project: The project (default: the current one).
        settings: The plugin settings (for ``output_folder``).
    """
    project = project or QgsProject.instance()
    if project.fileName():
        return Path(project.homePath() or Path(project.fileName()).parent) / RUNS_FOLDER
    if settings.output_folder:
        return Path(settings.output_folder).expanduser()
    return None


def unique_path(folder: Path, stem: str, suffix: str = ".gpkg") -> Path:
    """``folder/stem.gpkg``, or ``stem_2.gpkg``, ``stem_3.gpkg``, ... the first that does not exist."""
    candidate = folder / f"{stem}{suffix}"
    counter = 2
    while candidate.exists():
        candidate = folder / f"{stem}_{counter}{suffix}"
        counter += 1
    return candidate


def ensure_writable_folder(folder: Path) -> Path:
    """Create ``folder`` when missing and check that files can be written in it.

    Raises:
        RsVlmError: The folder cannot be created or is not writable (the sentence says what to do).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RsVlmError(
            f"Could not create the output folder {folder} ({exc.strerror or exc}); choose another output "
            "folder in the RS-VLM settings, or save the project somewhere you can write to."
        ) from exc
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise RsVlmError(
            f"The output folder {folder} is not writable; choose another output folder in the RS-VLM "
            "settings, or save the project somewhere you can write to."
        )
    return folder


def run_output_path(kind: str, project: QgsProject | None, settings: PluginSettings,
                    when: datetime | None = None) -> Path | None:
    """The GeoPackage a panel or toolbar run writes, never an existing file.

    Args:
        kind: The run's kind ("describe", "search", "classify", "ask"), the start of the file name.
        project: The project (default: the current one).
        settings: The plugin settings (for ``output_folder``).
        when: The run's time (default: now), in the file name as ``YYYYmmdd_HHMMSS``.

    Returns:
        ``<folder>/rs_vlm_<kind>_<time>.gpkg`` (with ``_2``, ``_3``... when taken), the folder
        created; None when the project is not saved and no output folder is set (ask the user
        for one, store it in ``settings.output_folder`` and call again).

    Raises:
        RsVlmError: The folder cannot be created or written.
    """
    folder = runs_folder(project, settings)
    if folder is None:
        return None
    ensure_writable_folder(folder)
    stamp = (when or datetime.now()).strftime("%Y%m%d_%H%M%S")
    return unique_path(folder, f"rs_vlm_{kind}_{stamp}")
