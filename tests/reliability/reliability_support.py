"""Bookkeeping of the reliability suite: what a failed job must leave as it was, how long a case
may run, and the row each case adds to the suite's report (see ``conftest.py``)."""

from __future__ import annotations

import hashlib
import re
import signal
import stat
from contextlib import contextmanager
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
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):  # a FIFO or a device: opening it could block
                seen[path] = f"special:{stat.S_IFMT(info.st_mode)}"
            elif not info.st_mode & 0o444:  # unreadable on purpose (the test may run as root)
                seen[path] = f"unreadable:{info.st_size}:{info.st_mtime_ns}"
            else:
                seen[path] = f"{info.st_size}:{info.st_mtime_ns}" if info.st_size > BIG_FILE else sha256(path)
    return seen


class CaseTimeout(BaseException):
    """A case ran past its time limit (a BaseException, so that no ``except Exception`` of the product hides it)."""


@contextmanager
def time_limit(seconds: float):
    """Interrupt the block after ``seconds`` with :class:`CaseTimeout` (SIGALRM; the main thread only)."""
    def expired(signum, frame):
        raise CaseTimeout(f"the case ran past its limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_sentence(err: str) -> None:
    """A refusal's stderr: one line, ``Error: `` and a sentence, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and lines[0].rstrip().endswith((".", ")")), err


def record_case(request, table: str, name: str, argv, expected_code: int, says: str, limit_s: float) -> dict:
    """Attach the case's row to its test report (``conftest.py`` prints and writes the table); returns the
    row, whose ``got`` and ``seconds`` the case fills in as it runs."""
    shown = " ".join(str(a) for a in argv)
    row = {"table": table, "case": name, "input": re.sub(r"\s+", " ", shown)[:110],
           "expected": "exit 0, result checked" if expected_code == 0 else f"exit {expected_code}, one sentence",
           "says": says, "limit_s": limit_s, "got": None, "seconds": None}
    request.node.user_properties.append(("hostile_case", row))
    return row
