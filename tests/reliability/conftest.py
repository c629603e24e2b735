"""Fixtures of the reliability suite: seeded hostile files (``hostile_data.py``), a real index,
and the bookkeeping that proves a failed job changed nothing.

Every case snapshots the files it could touch (sha256 of each) before it runs and compares
after: inputs and pre-existing files are unchanged, and the only new file is the output of a
job that succeeded (no temporary GeoPackage, journal or lock file is left behind).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import hostile_data  # noqa: E402
from reliability_support import sha256  # noqa: E402


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> dict[str, Path]:
    """The hostile rasters (see :func:`hostile_data.make_rasters`)."""
    return hostile_data.make_rasters(tmp_path_factory.mktemp("hostile"), seed=0)


@pytest.fixture(scope="session")
def broken_models(tmp_path_factory, bundle_dir) -> dict[str, Path]:
    """Broken copies of the real bundle; the real bundle's files are checked unchanged at the end."""
    before = {p: sha256(p) for p in sorted(bundle_dir.iterdir()) if p.is_file()}
    yield hostile_data.make_models(tmp_path_factory.mktemp("models"), bundle_dir)
    after = {p: sha256(p) for p in sorted(bundle_dir.iterdir()) if p.is_file()}
    assert after == before, "a test changed the model bundle"


@pytest.fixture(scope="session")
def index_file(tmp_path_factory, hostile, bundle_dir) -> Path:
    """A real index of the hostile scene, built by the command line."""
    from rs_vlm_plugin.core.cli import main

    path = tmp_path_factory.mktemp("index") / "scene.rsvlm-index.gpkg"
    assert main(["index", str(hostile["scene"]), "-o", str(path), "--max-tiles", "4", "-q",
                 "--model", str(bundle_dir)]) == 0
    return path


@pytest.fixture(scope="session")
def broken_indexes(tmp_path_factory, index_file) -> dict[str, Path]:
    """Damaged copies of the real index (see :func:`hostile_data.make_broken_indexes`)."""
    return hostile_data.make_broken_indexes(index_file, tmp_path_factory.mktemp("indexes"))


@pytest.fixture(scope="session")
def packages(tmp_path_factory) -> dict[str, Path]:
    """Model packages, good and hostile (see :func:`hostile_data.make_packages`)."""
    return hostile_data.make_packages(tmp_path_factory.mktemp("packages"))


# The case table: every hostile case attaches its row (reliability_support.record_case); the rows are
# printed at the end of the run and written to out/hostile_report.md.
_ROWS: list[dict] = []


def pytest_runtest_logreport(report):
    rows = [value for key, value in report.user_properties if key == "hostile_case"]
    if not rows or (report.when == "setup" and report.passed) or (report.when == "teardown" and report.passed):
        return
    row = dict(rows[0], outcome=report.outcome)
    _ROWS[:] = [r for r in _ROWS if (r["table"], r["case"]) != (row["table"], row["case"])] + [row]


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    passed = sum(r["outcome"] == "passed" for r in _ROWS)
    results = sum(r["got"] == 0 for r in _ROWS if r["outcome"] == "passed")
    lines = [f"| {r['table']} | {r['case']} | `{r['input'].replace('|', '/')}` | {r['expected']} | "
             f"{'-' if r['got'] is None else 'exit ' + str(r['got'])} | "
             f"{'-' if r['seconds'] is None else format(r['seconds'], '.1f')} / {r['limit_s']:g} | {r['outcome']} |"
             for r in _ROWS]
    summary = (f"hostile cases: {len(_ROWS)}, passed {passed} ({results} correct results, {passed - results} "
               f"refusals in one sentence), {len(_ROWS) - passed} failed or skipped")
    root = Path(__file__).resolve().parents[2]
    try:
        (root / "out").mkdir(exist_ok=True)
        (root / "out" / "hostile_report.md").write_text(
            f"# Hostile-input suite\n\n{summary}\n\n| table | case | input | expected | got | s / limit | verdict |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n", encoding="utf-8")
        where = f"; the table is in {root / 'out' / 'hostile_report.md'}"
    except OSError:
        where = ""
    terminalreporter.write_sep("-", summary + where)
    for r in _ROWS:
        if r["outcome"] != "passed":
            terminalreporter.write_line(f"  {r['outcome']}: {r['table']}::{r['case']}")
