"""Checks of a job before any work is done, and the lock that keeps two jobs off one output.

Every check raises :class:`RsVlmError` with a sentence that says what to do, so a job that
would fail on its inputs, its output file or its options fails at once, before the model is
loaded or a pixel is read:

- inputs (raster, index) exist, are files and are readable;
- the output is a new ``.gpkg`` (or an existing one with ``overwrite``) in an existing
  writable folder, not a folder, and none of the inputs or model files (resolved paths, and
  the same inode for hard links);
- numbers are in range: threads 0 (automatic) or 1 to the CPU count, counts at least 1, a
  pixel budget of at least one tile (:class:`dris.PlanConfig` checks that).

:class:`OutputLock` is a file beside the output, created with ``O_CREAT | O_EXCL``: a second
job writing the same output is refused while the first runs; a lock left by a job that died
(its process is gone) is taken over.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .planning.dris import PlanConfig
from .errors import RsVlmError

GPKG_SUFFIX = ".gpkg"
LOCK_SUFFIX = ".lock"
MIN_SIDE_PX = 8
"""Rasters and extents narrower than this many pixels are refused (nothing to see at tile size)."""


def check_input_file(path: str | Path, what: str = "raster file") -> Path:
    """An input file that exists and can be read.

    Args:
        path: The file (GDAL ``/vsi...`` paths are passed through unchecked).
        what: What the file is, for the sentence ("raster file", "index file").

    Raises:
        RsVlmError: It is missing, a folder, or not readable.
    """
    path = Path(path)
    if str(path).startswith("/vsi"):
        return path
    if not path.exists():
        raise RsVlmError(f"The {what} {path} does not exist; check the path.")
    if path.is_dir():
        raise RsVlmError(f"The {what} {path} is a folder; give the file itself.")
    if not path.is_file():  # opening a named pipe would wait for a writer forever
        raise RsVlmError(f"The {what} {path} is not a regular file (a named pipe, socket or device); give the file "
                         "itself.")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise RsVlmError(f"The {what} {path} cannot be read ({exc.strerror or exc}); check its permissions.") from exc
    return path


def model_files(model_dir: str | Path) -> list[Path]:
    """The files of a model bundle folder (what an output must never replace)."""
    folder = Path(model_dir)
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def check_output(path: str | Path, inputs: Sequence[str | Path] = (), overwrite: bool = False) -> Path:
    """An output GeoPackage that may be written.

    Args:
        path: The file to write.
        inputs: Files the job reads (raster, index, model files); the output must be none of them.
        overwrite: Allow replacing an existing output.

    Returns:
        The path, as given.

    Raises:
        RsVlmError: It is a folder, not a ``.gpkg``, in a missing or read-only folder, one of the
            inputs, or exists without ``overwrite``.
    """
    target = Path(path)
    if target.is_dir():
        raise RsVlmError(f"The output {target} is a folder; give a file name ending in {GPKG_SUFFIX} inside it.")
    if target.suffix.lower() != GPKG_SUFFIX:
        raise RsVlmError(f"The output {target} is not a GeoPackage; give a file name ending in {GPKG_SUFFIX}.")
    folder = target.parent
    if not folder.is_dir():
        raise RsVlmError(f"The folder {folder} does not exist; create it or choose another output file.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RsVlmError(f"The folder {folder} is not writable; choose a folder you can write to.")
    for source in inputs:
        if _same_file(target, Path(source)):
            raise RsVlmError(f"The output {target} is the input file {source}; choose another output file "
                             "(an input is never overwritten).")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise RsVlmError(f"The output {target} already exists; choose another file name, or pass --overwrite "
                             "to replace it.")
        if not target.is_file():
            raise RsVlmError(f"The output {target} exists and is not a regular file; choose another file name.")
    return target


def check_threads(threads: int) -> int:
    """Threads for onnxruntime: 0 (automatic) or 1 to the CPU count."""
    cores = os.cpu_count() or 1
    if not 0 <= threads <= cores:
        raise RsVlmError(f"The number of threads must be 0 (automatic) or between 1 and {cores} (the CPU cores "
                         f"of this machine), not {threads}.")
    return threads


def check_count(value: int | None, option: str) -> int | None:
    """A count that must be at least 1 (None passes: the option was not given)."""
    if value is not None and value < 1:
        raise RsVlmError(f"{option} must be at least 1, not {value}; give a positive number.")
    return value


@dataclass(frozen=True)
class JobCheck:
    """What a job reads, writes and how, to check before any work.

    Attributes:
        inputs: ``(path, what)`` of each input file ("raster file", "index file").
        output: The GeoPackage to write.
        model_dir: The model bundle folder; its files may not be the output.
        overwrite: Replace an existing output.
        threads: onnxruntime threads (0: automatic).
        counts: ``(option, value)`` of options that must be at least 1 (``--top-k``, ...).
        plan: The planner settings, when the job plans tiles (checked by building it).
    """

    inputs: tuple[tuple[Path, str], ...]
    output: Path
    model_dir: Path
    overwrite: bool = False
    threads: int = 0
    counts: tuple[tuple[str, int | None], ...] = ()
    plan: dict | None = None


def check_job(job: JobCheck) -> PlanConfig | None:
    """Run every check of a job; returns its plan settings (None when it plans no tiles).

    Raises:
        RsVlmError: The first problem found, as a sentence.
    """
    for option, value in job.counts:
        check_count(value, option)
    check_threads(job.threads)
    plan = PlanConfig(tile_size=model_tile_size(job.model_dir), **job.plan) if job.plan is not None else None
    inputs = [check_input_file(path, what) for path, what in job.inputs]
    check_output(job.output, [*inputs, *model_files(job.model_dir)], job.overwrite)
    return plan


def model_tile_size(model_dir: str | Path) -> int:
    """The model's input size from its manifest (the planner's default when it cannot be read;
    loading the bundle then says what is wrong)."""
    try:
        manifest = json.loads((Path(model_dir) / "manifest.json").read_text(encoding="utf-8"))
        return int(manifest["image_encoder"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return PlanConfig().tile_size


def check_pixel_size(width_px: float, height_px: float, name: str) -> None:
    """Refuse a raster or extent narrower than :data:`MIN_SIDE_PX` pixels on a side."""
    if min(width_px, height_px) < MIN_SIDE_PX:
        raise RsVlmError(
            f"The area of {name} to process is {width_px:.4g} x {height_px:.4g} pixels, smaller than "
            f"{MIN_SIDE_PX} pixels on a side; give a larger raster or extent.")


class OutputLock:
    """A lock file beside an output, held while a job writes it (a context manager).

    The lock is ``<output>.lock``, created with ``O_CREAT | O_EXCL`` and holding the host and
    process id of its owner; it is removed on exit, whatever happened. A lock whose owner
    process no longer runs on this host is stale and taken over.

    Raises:
        RsVlmError: Another running job holds the lock.
    """

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + LOCK_SUFFIX)
        self._held = False

    def __enter__(self) -> "OutputLock":
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._is_stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise RsVlmError(
                    f"Another job is writing {self.output} (its lock file {self.path} exists); wait for it to "
                    f"finish or choose another output file. If no job is running (one that crashed leaves the "
                    f"lock behind), delete {self.path} and try again.") from None
            except OSError as exc:
                raise RsVlmError(f"Could not create the lock file {self.path} ({exc.strerror or exc}); check that "
                                 "the output folder is writable.") from exc
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"host": socket.gethostname(), "pid": os.getpid()}, handle)
            self._held = True
            return self
        raise RsVlmError(f"Could not take the lock file {self.path}; delete it and try again.")

    def __exit__(self, *exc_info) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def _is_stale(self) -> bool:
        """True when the lock names a process of this host that no longer runs."""
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
            host, pid = owner["host"], int(owner["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return False  # being written right now, or not ours to judge
        if host != socket.gethostname() or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # runs, under another user
        return False


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (after links, or hard links to one inode)."""
    if str(b).startswith("/vsi"):
        return False
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


PROMPT_TOKENS = 10
"""Tokens a prompt template ("an aerial image of {}.") adds around a text, with [CLS] and [SEP]."""


def text_warnings(bundle, text: str, what: str = "The search text") -> list[str]:
    """Sentences about a text the model cannot read well: only unknown words, or cut short.

    Args:
        bundle: The model (its tokenizer and the text tower's ``max_tokens``).
        text: The text as it will be embedded.
        what: How the sentence names the text ("The search text", "The class name \\"x\\"").

    Returns:
        Zero, one or two sentences (for :meth:`ProgressBackend.warn`).
    """
    tokenizer = bundle.tokenizer
    encoding = tokenizer.encode(text)
    unknown = getattr(tokenizer.model, "unk_token", None)
    words = [tok for tok, special in zip(encoding.tokens, encoding.special_tokens_mask) if not special]
    warnings = []
    if words and unknown is not None and all(tok == unknown for tok in words):
        warnings.append(f"{what} has no word the model knows (only symbols or characters outside its vocabulary); "
                        "the results are not meaningful. Describe what to find in plain words.")
    max_tokens = int(bundle.manifest["text_encoder"].get("max_tokens", 64))
    if encoding.overflowing or len(words) > max_tokens - PROMPT_TOKENS:
        warnings.append(f"{what} is too long for the model, which reads about {max_tokens - PROMPT_TOKENS} words "
                        f"and word pieces; the rest ({len(text):,} characters in all) was ignored. Shorten it to "
                        "what matters most.")
    return warnings
