"""The rasters of a batch: files, folders of files matching patterns, and text files listing paths."""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from ..errors import RsVlmError

BATCH_PATTERN = "*.tif;*.tiff;*.jp2;*.img;*.vrt"
"""Default patterns of the files taken from a folder: the usual raster extensions, ';'-separated."""
LIST_SUFFIXES = (".txt", ".lst", ".list")
"""A file with one of these extensions lists rasters, one path a line (relative to the list's folder)."""


def folder_rasters(folder: Path, pattern: str = BATCH_PATTERN) -> list[Path]:
    """The files directly in ``folder`` whose names match one of the patterns, sorted by name.

    Args:
        folder: The folder to list (not its sub-folders).
        pattern: Shell patterns separated by ";" (or ","), matched without regard to case.
    """
    patterns = [p.strip().lower() for p in pattern.replace(",", ";").split(";") if p.strip()]
    matching = [p for p in folder.iterdir() if p.is_file() and any(fnmatch(p.name.lower(), pat) for pat in patterns)]
    return sorted(matching, key=lambda p: p.name.lower())


def expand_inputs(paths: list[Path], pattern: str = BATCH_PATTERN) -> list[Path]:
    """Every raster named by ``paths``, in order, each once: a folder gives its files matching
    ``pattern``, a list file (``.txt``) the paths on its lines (blank lines and ``#`` comments
    skipped), anything else is taken as a raster. Missing rasters are kept: they fail by name.

    Raises:
        RsVlmError: A folder or list is missing or names no raster.
    """
    out: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = folder_rasters(path, pattern or BATCH_PATTERN)
            if not found:
                raise RsVlmError(f"No file in {path} matches {pattern}; choose another folder or change --pattern "
                                 "(for example \"*.tif;*.png\").")
        elif path.suffix.lower() in LIST_SUFFIXES:
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise RsVlmError(f"The list of rasters {path} cannot be read ({exc.strerror or exc}); check the "
                                 "path.") from exc
            found = [Path(s) if Path(s).is_absolute() else path.parent / s
                     for s in (line.strip() for line in lines) if s and not s.startswith("#")]
            if not found:
                raise RsVlmError(f"The list {path} names no raster; write one raster path a line.")
        else:
            found = [path]
        out += found
    return list(dict.fromkeys(p.absolute() for p in out))
