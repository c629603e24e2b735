"""Progress and cancellation, reported the same way to a QgsTask, Processing or a terminal.

The core only talks to a :class:`ProgressBackend`; the QGIS shell and the command line
provide their own implementations (see Geo-SAM's `ProgressBackend`).
"""

from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable

from .errors import CancelledError


@runtime_checkable
class ProgressBackend(Protocol):
    """What a long job reports to, and asks whether to stop."""

    def set_stage(self, stage: str) -> None:
        """Announce the stage now running (for example "Encoding tiles")."""

    def set_fraction(self, fraction: float) -> None:
        """Report overall progress as a fraction in [0, 1]."""

    def is_canceled(self) -> bool:
        """Return True once the user asked to cancel."""

    def info(self, message: str) -> None:
        """Show an informational message to the user."""

    def warn(self, message: str) -> None:
        """Show a warning (the job goes on)."""


class NullProgress:
    """Reports nowhere and never cancels."""

    def set_stage(self, stage: str) -> None:  # noqa: D102
        pass

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        pass

    def is_canceled(self) -> bool:  # noqa: D102
        return False

    def info(self, message: str) -> None:  # noqa: D102
        pass

    def warn(self, message: str) -> None:  # noqa: D102
        pass


class RecordingProgress(NullProgress):
    """Keeps what was reported; can cancel after a number of fraction updates (for tests)."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.stages: list[str] = []
        self.fractions: list[float] = []
        self.messages: list[str] = []
        self.warnings: list[str] = []
        self._cancel_after = cancel_after

    def set_stage(self, stage: str) -> None:  # noqa: D102
        self.stages.append(stage)

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        self.fractions.append(fraction)

    def is_canceled(self) -> bool:  # noqa: D102
        return self._cancel_after is not None and len(self.fractions) >= self._cancel_after

    def info(self, message: str) -> None:  # noqa: D102
        self.messages.append(message)

    def warn(self, message: str) -> None:  # noqa: D102
        self.warnings.append(message)


class TerminalProgress:
    """A progress bar on stderr (tqdm when installed), messages on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self._quiet = quiet
        self._bar = None
        self._stage = ""
        try:
            from tqdm import tqdm  # optional
        except ImportError:  # pragma: no cover - tqdm is in the project's requirements
            tqdm = None
        if tqdm is not None and not quiet:
            self._bar = tqdm(total=1000, unit="", bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
                             file=sys.stderr, leave=True)

    def set_stage(self, stage: str) -> None:  # noqa: D102
        self._stage = stage
        if self._bar is not None:
            self._bar.set_description_str(stage)
        elif not self._quiet:
            print(stage, file=sys.stderr)

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        if self._bar is not None:
            target = int(round(max(0.0, min(1.0, fraction)) * 1000))
            self._bar.update(max(0, target - self._bar.n))

    def is_canceled(self) -> bool:  # noqa: D102
        return False

    def info(self, message: str) -> None:  # noqa: D102
        if not self._quiet:
            self._write(message)

    def warn(self, message: str) -> None:  # noqa: D102
        self._write(f"Warning: {message}")

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)


def check_canceled(progress: ProgressBackend) -> None:
    """Raise :class:`CancelledError` if the user asked to stop."""
    if progress.is_canceled():
        raise CancelledError()


class SubProgress:
    """Maps a child job's [0, 1] onto a slice [start, end] of a parent's progress.

    Args:
        parent: The progress the child reports to.
        start: The parent's fraction when the child starts.
        end: The parent's fraction when the child is done.
        prefix: Put before each of the child's stage texts (for example "Captioning 3 of 7: scene: ").
    """

    def __init__(self, parent: ProgressBackend, start: float, end: float, prefix: str = "") -> None:
        self._parent = parent
        self._start = start
        self._end = end
        self._prefix = prefix

    def set_stage(self, stage: str) -> None:  # noqa: D102
        self._parent.set_stage(f"{self._prefix}{stage}")

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        self._parent.set_fraction(self._start + (self._end - self._start) * max(0.0, min(1.0, fraction)))

    def is_canceled(self) -> bool:  # noqa: D102
        return self._parent.is_canceled()

    def info(self, message: str) -> None:  # noqa: D102
        self._parent.info(message)

    def warn(self, message: str) -> None:  # noqa: D102
        self._parent.warn(message)
