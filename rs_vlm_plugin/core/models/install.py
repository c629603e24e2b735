"""Installing, listing and removing models in a models folder (one bundle folder per model).

A package is checked before anything moves: a zip of one ``<name>/`` folder, no paths leaving it,
every file in its ``SHA256SUMS`` with that hash, a ``manifest.json`` of a bundle format this plugin
reads. It is unpacked into ``<models>/.installing-*`` and moved into place with one rename; a model
of the same name is replaced the same way. A failure at any point removes the temporary folder, so
a models folder holds complete models only.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import RsVlmError
from ..progress import NullProgress, ProgressBackend, check_canceled
from .archive import SUMS, parse_sums, sha256_of
from .download import TIMEOUT_S, download
from .registry import ModelEntry, Registry

PARTIAL_PREFIXES = (".installing-", ".replaced-")
DOWNLOADS = ".downloads"
MAX_RATIO = 100
"""A member more than this many times smaller packed than unpacked (over :data:`RATIO_FROM` bytes) is a
zip bomb: model weights hardly compress, and the text files of a bundle are small."""
RATIO_FROM = 1 << 20


@dataclass(frozen=True)
class InstalledModel:
    """A model found in a models folder.

    Attributes:
        name: Its folder name.
        folder: The bundle folder.
        version: The registry version it was installed as ("" when installed otherwise).
        format_version: Its manifest's bundle format version.
    """

    name: str
    folder: Path
    version: str
    format_version: int | None


def installed_models(*roots: Path) -> list[InstalledModel]:
    """The bundles in ``roots`` (folders with a ``manifest.json``), first root first; a name
    found twice is listed once. Folders left by an interrupted install are never listed."""
    found, names = [], set()
    for root in roots:
        if not root or not Path(root).is_dir():
            continue
        for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            manifest = folder / "manifest.json"
            if folder.name in names or not manifest.is_file():
                continue
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            names.add(folder.name)
            found.append(InstalledModel(folder.name, folder, str(data.get("package_version", "")),
                                        data.get("format_version")))
    return found


def install_archive(archive: str | os.PathLike, models_root: str | os.PathLike, version: str = "",
                    progress: ProgressBackend | None = None) -> Path:
    """Install a model package (zip) into ``models_root``; returns the bundle folder.

    Raises:
        RsVlmError: The file is not a model package, is damaged (a hash differs), needs another
            bundle format, or the disk is full; nothing is left behind.
    """
    from ..bundle import BUNDLE_FORMAT, SUPPORTED_VERSIONS

    progress = progress or NullProgress()
    archive, root = Path(archive), Path(models_root)
    name, members = _read_members(archive)
    work = _work_folder(root)
    try:
        _check_room(archive, root)
        progress.set_stage("Unpacking the model")
        with zipfile.ZipFile(archive) as zf:
            for i, member in enumerate(members):
                check_canceled(progress)
                try:
                    with zf.open(member) as src, open(work / Path(member).name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # a bad CRC, a broken stream, cut short
                    raise RsVlmError(f"{archive.name} is damaged ({member} cannot be unpacked: {exc}); download "
                                     "the package again (nothing was installed).") from exc
                progress.set_fraction((i + 1) / len(members))
        _check_sums(work, archive)
        manifest = _manifest(work, archive)
        if manifest.get("format") != BUNDLE_FORMAT or manifest.get("format_version") not in SUPPORTED_VERSIONS:
            raise RsVlmError(f"{archive.name} holds a model of bundle format {manifest.get('format_version')!r}; this "
                             f"version of RS-VLM reads {SUPPORTED_VERSIONS}. Update the plugin or choose another model.")
        if version:
            manifest["package_version"] = version
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        return _move_into_place(work, root / name)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RsVlmError(f"The disk is full while unpacking {archive.name} into {root}; free some space and "
                             "try again (nothing was installed).") from exc
        raise RsVlmError(f"{archive.name} could not be installed into {root} ({exc.strerror or exc}); check that "
                         "the models folder is writable (nothing was installed).") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _work_folder(root: Path) -> Path:
    """A new ``.installing-*`` folder in ``root`` (created with its parents); a sentence when it cannot be."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIXES[0], dir=root))
    except OSError as exc:
        raise RsVlmError(f"The models folder {root} cannot be created or written ({exc.strerror or exc}); choose "
                         "another one (--models-dir, or RSVLM_MODELS_DIR) or fix its permissions.") from exc


def _check_room(archive: Path, root: Path) -> None:
    """Refuse a package whose unpacked files would not fit beside the models, or that unpacks like a zip bomb."""
    with zipfile.ZipFile(archive) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
    for info in infos:
        if info.file_size > RATIO_FROM and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise RsVlmError(f"{archive.name} is not a model package: {info.filename} would unpack to "
                             f"{info.file_size / 1e6:,.0f} MB from {info.compress_size / 1e6:,.1f} MB (a zip bomb); "
                             "nothing was installed.")
    needed, free = sum(i.file_size for i in infos), shutil.disk_usage(root).free
    if needed > free:
        raise RsVlmError(f"There is not enough free space in {root} to unpack {archive.name}: it needs "
                         f"{needed / 1e6:,.0f} MB, {free / 1e6:,.0f} MB are free. Free some space or choose another "
                         "models folder.")


def install_from_registry(registry: Registry, name: str, models_root: str | os.PathLike, mirror: str = "",
                          progress: ProgressBackend | None = None,
                          opener: urllib.request.OpenerDirector | None = None, timeout_s: float = TIMEOUT_S) -> Path:
    """Download a registry model (resuming an earlier attempt), check it and install it.

    The package is kept in ``<models>/.downloads/`` only while incomplete (for a resume).

    Raises:
        RsVlmError: Not enough free space, and everything :func:`download` and
            :func:`install_archive` raise.
    """
    from ..bundle import SUPPORTED_VERSIONS

    entry = registry.get(name)
    if entry.format_version not in SUPPORTED_VERSIONS:
        raise RsVlmError(f"{entry.name} {entry.version} needs bundle format {entry.format_version}; this version "
                         f"of RS-VLM reads {SUPPORTED_VERSIONS}. Update the plugin first.")
    root = Path(models_root)
    downloads = root / DOWNLOADS
    try:
        downloads.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RsVlmError(f"The models folder {root} cannot be created or written ({exc.strerror or exc}); choose "
                         "another one (--models-dir, or RSVLM_MODELS_DIR) or fix its permissions.") from exc
    check_free_space(entry, downloads)
    package = downloads / entry.file
    download(registry.url_of(entry, mirror), package, entry.size, entry.sha256, progress, opener, timeout_s)
    try:
        return install_archive(package, root, entry.version, progress)
    finally:
        package.unlink(missing_ok=True)


def check_free_space(entry: ModelEntry, folder: Path) -> None:
    """Refuse to start when ``folder`` cannot hold the package and the unpacked model (about 2.2 x)."""
    part = folder / (entry.file + ".part")
    have = part.stat().st_size if part.exists() else 0
    needed = int((entry.size - have) + entry.size * 1.2)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RsVlmError(f"There is not enough free space in {folder}: {entry.name} needs {needed / 1e6:.0f} MB, "
                         f"{free / 1e6:.0f} MB are free. Free some space or choose another models folder.")


def remove_model(name: str, models_root: str | os.PathLike) -> Path:
    """Remove an installed model (renamed aside first, so a failed delete leaves no half model)."""
    root = Path(models_root)
    folder = root / name
    if not (folder / "manifest.json").is_file() or name.startswith(".") or Path(name).name != name:
        known = ", ".join(m.name for m in installed_models(root)) or "none"
        raise RsVlmError(f"No model {name!r} is installed in {root} (installed: {known}).")
    aside = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIXES[1], dir=root))
    os.replace(folder, aside / name)
    shutil.rmtree(aside, ignore_errors=True)
    return folder


def clean_partial(models_root: str | os.PathLike) -> list[Path]:
    """Remove what an install killed mid-way left (``.installing-*``, ``.replaced-*``)."""
    root = Path(models_root)
    left = [p for p in root.iterdir() if p.name.startswith(PARTIAL_PREFIXES)] if root.is_dir() else []
    for path in left:
        shutil.rmtree(path, ignore_errors=True)
    return left


def _read_members(archive: Path) -> tuple[str, list[str]]:
    """The bundle's name and its files in a package; a sentence when it is not a package."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (OSError, zipfile.BadZipFile) as exc:
        raise RsVlmError(f"{archive} is not a model package (a zip file from the project's releases): {exc}.") from exc
    names = [i.filename for i in infos]
    links = [i.filename for i in infos if stat.S_ISLNK(i.external_attr >> 16)]
    if links:
        raise RsVlmError(f"{archive.name} is not a model package: {links[0]} is a symbolic link, and a package holds "
                         "model files only.")
    tops = {n.split("/", 1)[0] for n in names}
    flat = all(n.count("/") == 1 for n in names)
    if len(tops) != 1 or not flat or any(n.startswith("/") or ".." in n.split("/") or "\\" in n for n in names):
        raise RsVlmError(f"{archive.name} is not a model package: it must hold exactly one folder of model files.")
    name = tops.pop()
    if name.startswith(".") or f"{name}/manifest.json" not in names or f"{name}/{SUMS}" not in names:
        raise RsVlmError(f"{archive.name} is not a model package: it has no manifest.json and {SUMS} in one folder.")
    return name, names


def _check_sums(work: Path, archive: Path) -> None:
    sums = parse_sums((work / SUMS).read_text(encoding="utf-8"))
    present = {p.name for p in work.iterdir()} - {SUMS}
    if set(sums) != present:
        raise RsVlmError(f"{archive.name} is incomplete or has extra files (compared with its {SUMS}); download "
                         "it again.")
    for file, digest in sums.items():
        if sha256_of(work / file) != digest:
            raise RsVlmError(f"{file} in {archive.name} is damaged (its SHA-256 differs from {SUMS}); download the "
                             "package again.")


def _manifest(work: Path, archive: Path) -> dict:
    try:
        manifest = json.loads((work / "manifest.json").read_text(encoding="utf-8"))
    except ValueError as exc:  # not JSON, or not UTF-8 text
        raise RsVlmError(f"The manifest in {archive.name} is not valid JSON ({exc}); download it again.") from exc
    if not isinstance(manifest, dict):
        raise RsVlmError(f"The manifest in {archive.name} is not a model manifest (it holds a "
                         f"{type(manifest).__name__}, not an object); download it again.")
    return manifest


def _move_into_place(work: Path, target: Path) -> Path:
    """Rename the checked folder to ``target``; an older model there is renamed aside, then deleted."""
    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIXES[1], dir=target.parent))
        os.replace(target, aside / target.name)
    try:
        os.replace(work, target)
    except OSError:
        if aside is not None:
            os.replace(aside / target.name, target)  # put the old model back
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return target
