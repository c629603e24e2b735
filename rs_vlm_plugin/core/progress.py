"""Progress and cancellation, reported the same way to a QgsTask, Processing or a terminal.

The core only talks to a :class:`ProgressBackend`; the QGIS shell and the command line
provide their own implementations (see Geo-SAM's `ProgressBackend`).
"""

from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable

from .errors import CancelledError
from .pace import Pace, PaceReading


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
    """Progress on stderr: a bar on a terminal (tqdm), plain lines anywhere else.

    A terminal (stderr is a TTY) gets a bar that redraws in place. Anything else (a file, a pipe,
    a CI log) gets one line per 10 % or per 30 s with the stage, elapsed time, rate and time left
    (:mod:`pace`), never the bar's carriage returns. ``quiet`` writes no progress and no
    information; ``collect_warnings`` keeps warnings in :attr:`warnings` instead of writing them
    (``--json``: they go into the JSON), so stderr stays clean for what went wrong.

    Args:
        quiet: No bar, no lines, no information messages.
        collect_warnings: Keep warnings for the caller rather than writing them.
        stream: Where to write (default ``sys.stderr``).
        tty: Whether ``stream`` is a terminal (default: asked from the stream).
        pace: The timing of the plain lines (default every 10 % or 30 s).
    """

    def __init__(self, quiet: bool = False, collect_warnings: bool = False, stream=None, tty: bool | None = None,
                 pace: Pace | None = None) -> None:
        self._quiet = quiet
        self._collect = collect_warnings
        self._stream = stream if stream is not None else sys.stderr
        self._bar = None
        self._stage = ""
        self._pace = pace or Pace()
        self.warnings: list[str] = []
        if tty is None:
            isatty = getattr(self._stream, "isatty", None)
            tty = bool(isatty and isatty())
        self._lines = not quiet and not tty
        if tty and not quiet:
            try:
                from tqdm import tqdm  # optional
            except ImportError:  # pragma: no cover - tqdm is in the project's requirements
                self._lines = True  # no bar to draw: plain lines instead
            else:
                self._bar = tqdm(total=1000, unit="", bar_format="{desc} {percentage:3.0f}%|{bar}| "
                                 "{elapsed}<{remaining}", file=self._stream, leave=True)

    def set_stage(self, stage: str) -> None:  # noqa: D102
        self._stage = stage
        if self._bar is not None:
            self._bar.set_description_str(stage)
        elif self._lines:
            self._line(self._pace.tick())

    def set_fraction(self, fraction: float) -> None:  # noqa: D102
        if self._bar is not None:
            target = int(round(max(0.0, min(1.0, fraction)) * 1000))
            self._bar.update(max(0, target - self._bar.n))
        elif self._lines:
            self._line(self._pace.update(fraction))

    def is_canceled(self) -> bool:  # noqa: D102
        return False

    def info(self, message: str) -> None:  # noqa: D102
        if not self._quiet:
            self._write(message)

    def warn(self, message: str) -> None:  # noqa: D102
        if self._collect:
            if message not in self.warnings:
                self.warnings.append(message)
        else:
            self._write(f"Warning: {message}")

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _line(self, reading: PaceReading | None) -> None:
        if reading is not None:
            self._write(reading.line(self._stage))

    def _write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self._stream)
        else:
            # One write with its newline: print() writes the end separately, and a Ctrl+C between the
            # two would glue the next line ("Interrupted; ...") onto this one.
            self._stream.write(message + "\n")
            self._stream.flush()


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
