"""Model packages: a zip of one bundle folder with a SHA-256 list (standard library only).

    rs-vlm-lite0-1.0.0.zip
      rs-vlm-lite0/manifest.json, *.onnx, tokenizer.json, ...
      rs-vlm-lite0/SHA256SUMS          "<hex>  <file>" per file, sorted

The same bytes come out for the same bundle (fixed times and order), so the size and hash in the
registry stay valid until the bundle changes.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

SUMS = "SHA256SUMS"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(folder: Path) -> list[Path]:
    """The files of a bundle that belong in its package (no hidden build stamps, no caches)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name != SUMS and p.suffix != ".pyc")


def sums_text(folder: Path, files: list[Path]) -> str:
    """``SHA256SUMS`` of ``files`` (relative to ``folder``)."""
    return "".join(f"{sha256_of(p)}  {p.relative_to(folder).as_posix()}\n" for p in files)


def parse_sums(text: str) -> dict[str, str]:
    """``{file: hex}`` from a ``SHA256SUMS`` text (lines "hex  name"; "*name" binary marks allowed)."""
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            sums[name.strip().lstrip("*")] = digest.lower()
    return sums


def write_model_package(bundle: Path, target: Path, name: str | None = None) -> Path:
    """Zip ``bundle`` as ``<name>/...`` with its ``SHA256SUMS`` into ``target`` (atomically).

    Args:
        bundle: The bundle folder (with ``manifest.json``).
        target: The zip to write.
        name: The folder name inside the zip; default the bundle folder's name.

    Returns:
        ``target``.
    """
    name = name or bundle.name
    files = bundle_files(bundle)
    if not any(p.name == "manifest.json" for p in files):
        raise FileNotFoundError(f"{bundle} has no manifest.json; it is not a model bundle")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in files:
            write_member(zf, f"{name}/{path.name}", path.read_bytes())
        write_member(zf, f"{name}/{SUMS}", sums_text(bundle, files).encode())
    os.replace(tmp, target)
    return target


def write_member(zf: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    """Add ``data`` as ``arcname`` with a fixed time and mode, so that the same files make the same zip."""
    info = zipfile.ZipInfo(arcname, FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)
