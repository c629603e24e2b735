"""How far a job has come in time: elapsed, rate and time left, and when a log gets a line.

A terminal gets a progress bar; a log (stderr redirected to a file, Processing's log, QGIS's
message log) gets one plain line per :attr:`Pace.step` of progress or per :attr:`Pace.every_s`
seconds, whichever comes first, so a long job's log shows it moving without a line per tile::

    Encoding tiles: 40 % after 1 min 12 s (33 %/min), about 1 min 48 s left

The same figures feed the panel's "(... left)" (one estimate everywhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_FRACTION_FOR_ESTIMATE = 0.02
"""Below this share done, the rate says too little to estimate the time left."""
MIN_SECONDS_FOR_ESTIMATE = 1.0


def format_duration(seconds: float | None) -> str:
    """A duration as people say it: "12 s", "3 min 05 s", "1 h 02 min"; "unknown" for None."""
    if seconds is None:
        return "unknown"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass(frozen=True)
class PaceReading:
    """The pace of a job at one moment.

    Attributes:
        fraction: Share done, in [0, 1].
        elapsed_s: Seconds since the job started.
        rate_per_min: Percent done per minute (None before anything moved).
        remaining_s: Estimated seconds left (None while too early to say).
    """

    fraction: float
    elapsed_s: float
    rate_per_min: float | None
    remaining_s: float | None

    def line(self, stage: str = "") -> str:
        """The plain log line of this reading."""
        head = f"{stage}: " if stage else ""
        per_min = self.rate_per_min
        rate = f" ({per_min:.1f} %/min)" if per_min and per_min < 10 else f" ({per_min:.0f} %/min)" if per_min else ""
        left = f", about {format_duration(self.remaining_s)} left" if self.remaining_s is not None else ""
        return f"{head}{100 * self.fraction:.0f} % after {format_duration(self.elapsed_s)}{rate}{left}"


def estimate(fraction: float, elapsed_s: float) -> PaceReading:
    """The pace of a job ``fraction`` done after ``elapsed_s`` seconds (a steady rate assumed)."""
    fraction = max(0.0, min(1.0, fraction))
    elapsed = max(0.0, elapsed_s)
    rate = 100.0 * fraction / elapsed * 60.0 if elapsed > 0 and fraction > 0 else None
    remaining = None
    if fraction >= MIN_FRACTION_FOR_ESTIMATE and elapsed >= MIN_SECONDS_FOR_ESTIMATE:
        remaining = elapsed * (1.0 - fraction) / fraction
    return PaceReading(fraction, elapsed, rate, remaining)


@dataclass
class Pace:
    """Measures a job's pace and decides when a log is due its next line.

    Args:
        step: A line each time progress passes another multiple of this share (0.10: 10 %, 20 %, ...).
        every_s: And a line when this many seconds passed since the last one, moving or not.
        clock: Seconds, monotonic (a parameter so that tests can drive it).
    """

    step: float = 0.10
    every_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _started: float = field(default=0.0, init=False)
    _last_line_at: float = field(default=0.0, init=False)
    _last_step: int = field(default=0, init=False)
    _fraction: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """Start timing now (a new job)."""
        self._started = self._last_line_at = self.clock()
        self._last_step = 0
        self._fraction = 0.0

    def reading(self, fraction: float | None = None) -> PaceReading:
        """Elapsed, rate and time left at ``fraction`` (default: the last one given to :meth:`update`)."""
        return estimate(self._fraction if fraction is None else fraction, self.clock() - self._started)

    def update(self, fraction: float) -> PaceReading | None:
        """Record progress; returns a reading when a log line is due, else None.

        A line is due when progress crosses the next multiple of :attr:`step` (one line however
        many steps one update jumps) or when :attr:`every_s` passed since the last line.
        """
        self._fraction = max(0.0, min(1.0, fraction))
        now = self.clock()
        step = int(self._fraction / self.step + 1e-9)
        if step > self._last_step or now - self._last_line_at >= self.every_s:
            self._last_step = max(self._last_step, step)
            self._last_line_at = now
            return self.reading()
        return None

    def tick(self) -> PaceReading | None:
        """A reading when :attr:`every_s` passed with no progress reported (a stage that takes long)."""
        return self.update(self._fraction)
