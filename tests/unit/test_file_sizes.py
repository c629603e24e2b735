"""No Python file of the plugin or the training package over 500 lines (issue 21): a file that
grows past it is split into rooms, not left to grow."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 500


def test_no_python_file_over_500_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for folder in ("rs_vlm_plugin", "rs_vlm_train") for p in (ROOT / folder).rglob("*.py")}
    assert len(sizes) > 50
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"
