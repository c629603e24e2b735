"""Progress for people and for logs: the pace figures, when a log gets a line, the terminal's bar."""

from __future__ import annotations

import io
import re

import pytest

from rs_vlm_plugin.core.pace import Pace, estimate, format_duration
from rs_vlm_plugin.core.progress import TerminalProgress


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds, text", [(None, "unknown"), (0, "0 s"), (59.4, "59 s"), (60, "1 min 00 s"),
                                           (185, "3 min 05 s"), (3720, "1 h 02 min"), (-3, "0 s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_estimate_elapsed_rate_and_time_left():
    reading = estimate(0.25, 60.0)
    assert reading.rate_per_min == pytest.approx(25.0)
    assert reading.remaining_s == pytest.approx(180.0)
    assert estimate(0.01, 60.0).remaining_s is None  # too early to say
    assert estimate(0.5, 0.2).remaining_s is None
    assert estimate(0.0, 10.0).rate_per_min is None
    assert "(1.5 %/min)" in estimate(0.05, 200.0).line()
    assert estimate(0.4, 72.0).line("Encoding tiles") == \
        "Encoding tiles: 40 % after 1 min 12 s (33 %/min), about 1 min 48 s left"


def test_a_line_per_ten_percent_not_per_update():
    clock = Clock()
    pace = Pace(clock=clock)
    lines = []
    for k in range(1, 1001):  # a thousand small updates, 10 ms apart
        clock.now += 0.01
        reading = pace.update(k / 1000)
        if reading is not None:
            lines.append(round(100 * reading.fraction))
    assert lines == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def test_a_line_every_thirty_seconds_while_slow_and_one_for_a_jump():
    clock = Clock()
    pace = Pace(clock=clock)
    due = []
    for second in range(1, 121):  # 2 minutes at 1 % a minute: no 10 % step, a line each 30 s
        clock.now += 1.0
        if pace.update(second / 6000) is not None:
            due.append(second)
    assert due == [30, 60, 90, 120]
    clock.now += 1.0
    assert pace.update(0.95) is not None  # many steps at once: one line
    assert pace.update(0.96) is None
    clock.now += 30.0
    assert pace.tick() is not None  # a long stage with no progress still shows it is alive


def test_terminal_progress_writes_plain_lines_when_not_a_tty():
    clock = Clock()
    stream = io.StringIO()
    progress = TerminalProgress(stream=stream, pace=Pace(clock=clock))
    progress.set_stage("Encoding tiles")
    for k in range(1, 201):
        clock.now += 0.5
        progress.set_fraction(k / 200)
    progress.info("Done.")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "|" not in stream.getvalue()  # no bar drawn into a log
    assert len(lines) == 11 and lines[-1] == "Done."
    assert re.fullmatch(r"Encoding tiles: 10 % after 10 s \(60 %/min\), about 1 min 30 s left", lines[0])
    assert lines[-2].startswith("Encoding tiles: 100 % after 1 min 40 s")


def test_terminal_progress_draws_the_bar_on_a_tty():
    stream = io.StringIO()
    progress = TerminalProgress(stream=stream, tty=True)
    progress.set_stage("Encoding tiles")
    progress.set_fraction(0.5)
    progress.close()
    text = stream.getvalue()
    assert "\r" in text and "Encoding tiles  50%|" in text


def test_quiet_and_collected_warnings_keep_the_stream_clean():
    stream = io.StringIO()
    progress = TerminalProgress(quiet=True, collect_warnings=True, stream=stream)
    progress.set_stage("Encoding tiles")
    progress.set_fraction(0.5)
    progress.info("a message")
    progress.warn("a warning")
    progress.warn("a warning")
    progress.close()
    assert stream.getvalue() == ""
    assert progress.warnings == ["a warning"]
    loud = io.StringIO()
    TerminalProgress(quiet=True, stream=loud).warn("a warning")
    assert loud.getvalue() == "Warning: a warning\n"  # --quiet alone still says what to look at
