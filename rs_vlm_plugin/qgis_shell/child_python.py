"""Running the project's torch commands (model export, checkpoint import) in a separate Python.

QGIS's Python never needs torch: these commands run in another interpreter that has it, and
report progress with lines ``PROGRESS <0-100>``. Standard library only, so that the panel's
task and the Processing algorithms share one runner.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
"""The ``rs_vlm_plugin`` package folder."""


def default_python() -> str:
    """The interpreter that runs torch commands when none is given.

    The project's virtual environment beside the plugin source (``.venv``, made by
    ``build.py``, has torch) when it exists; otherwise this Python when it is a Python
    (inside QGIS ``sys.executable`` may be the QGIS program), else ``python3`` on the PATH.
    """
    root = PLUGIN_ROOT.parent
    for candidate in (root / ".venv" / "bin" / "python", root / ".venv" / "Scripts" / "python.exe"):
        if candidate.exists():
            return str(candidate)
    if Path(sys.executable).name.lower().startswith("python"):
        return sys.executable
    return shutil.which("python3") or shutil.which("python") or sys.executable


def progress_value(line: str) -> float | None:
    """The percentage of a ``PROGRESS <0-100>`` line, else None."""
    parts = line.split()
    if len(parts) == 2 and parts[0] == "PROGRESS":
        try:
            return max(0.0, min(100.0, float(parts[1])))
        except ValueError:
            return None
    return None


def stream_command(command: list[str], cwd: Path, on_progress: Callable[[float], None],
                   on_line: Callable[[str], None], is_canceled: Callable[[], bool],
                   poll_s: float = 0.1) -> tuple[int | None, list[str]]:
    """Run a child process with ``cwd`` on its PYTHONPATH, streaming its output; kill it on cancel.

    Args:
        command: The command line.
        cwd: Working folder, also put first on the child's PYTHONPATH (the plugin's parent).
        on_progress: Called with the percentage of each ``PROGRESS`` line.
        on_line: Called with every other non-empty line.
        is_canceled: Polled while the child runs; True kills it.
        poll_s: How often to poll.

    Returns:
        ``(exit code, output lines)``; the exit code is None when cancelled.

    Raises:
        OSError: The program could not be started.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(cwd)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    child = subprocess.Popen(command, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", bufsize=1)
    lines: list[str] = []
    pending: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            pending.put(line.rstrip("\r\n"))
        pending.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while True:
            if is_canceled():
                child.kill()
                child.wait()
                return None, lines
            try:
                line = pending.get(timeout=poll_s)
            except queue.Empty:
                continue
            if line is None:
                return child.wait(), lines
            lines.append(line)
            progress = progress_value(line)
            if progress is not None:
                on_progress(progress)
            elif line.strip():
                on_line(line)
    finally:
        reader.join(timeout=5)
        child.stdout.close()


def child_error(what: str, python: str, code: int, lines: list[str]) -> str:
    """The sentence for a failed child command, from its exit code and last lines of output.

    Args:
        what: What failed, for the sentence ("model export", "model import").
        python: The interpreter that ran it.
        code: Its exit code.
        lines: Its output.
    """
    text = "\n".join(lines)
    if "No module named 'torch'" in text or 'No module named "torch"' in text:
        return (f"The Python interpreter {python} has no torch, which the {what} needs; install it there "
                f"(\"{python} -m pip install torch\") or give an interpreter that has torch.")
    if "No module named 'rs_vlm_plugin" in text:
        return (f"The Python interpreter {python} cannot import rs_vlm_plugin from {PLUGIN_ROOT.parent}; "
                "give an interpreter of Python 3.10 or newer with numpy and torch.")
    last = next((line for line in reversed(lines) if line.strip()), "no output")
    return f"The {what} failed (exit code {code}): {last.strip()} See the log for the details."
