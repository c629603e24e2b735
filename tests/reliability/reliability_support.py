"""Bookkeeping of the reliability suite: what a failed job must leave as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

BIG_FILE = 2_000_000
"""Files above this size (the model's ONNX files) are hashed once per session, the rest per case."""


def sha256(path: Path) -> str:
    """sha256 of a file's bytes (through links)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def snapshot(*folders: Path) -> dict[Path, str]:
    """Every file under the folders (links as themselves) with its sha256; big files by size and time."""
    seen: dict[Path, str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                continue
            if not path.exists():  # a dangling link
                seen[path] = "dangling"
                continue
            stat = path.stat()
            seen[path] = f"{stat.st_size}:{stat.st_mtime_ns}" if stat.st_size > BIG_FILE else sha256(path)
    return seen
