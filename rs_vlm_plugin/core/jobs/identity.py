"""Identities that say when an index or a finished raster is stale: a model's fingerprint and a
raster file's (path, size, modification time).

May import: the bundle (for its folder) and the raster source type. Imported by the index and by
the cluster's resume manifest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..bundle import ModelBundle
from ..raster import RasterSource


def model_fingerprint(bundle: ModelBundle) -> str:
    """sha256 of the bundle's manifest.json and the sizes of its ONNX files.

    A re-exported model gets a new fingerprint, so an index of the old one is detected.
    """
    digest = hashlib.sha256((bundle.folder / "manifest.json").read_bytes())
    for onnx in sorted(bundle.folder.glob("*.onnx")):
        digest.update(f"\n{onnx.name}:{onnx.stat().st_size}".encode())
    return digest.hexdigest()


def file_identity(path: str | Path) -> str:
    """A raster file's identity: its resolved path, size and modification time."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return str(resolved)
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


def source_identity(source: RasterSource) -> str:
    """The identity of a source: :func:`file_identity` for files, its name otherwise."""
    path = getattr(source, "path", None)
    return file_identity(path) if path is not None and not str(path).startswith("/vsi") else source.name
