"""The core imports and searches on every Python QGIS ships: 3.9 (macOS builds up to 3.40 LTR), 3.12
(Windows OSGeo4W), 3.13 (QGIS 4 Flatpak), beside this project's 3.11.

Each Python gets a virtual environment in ``.cache/pythons/<version>`` with the core's packages in
the dependency installer's ranges, wheels only (tests/compat/python_envs.py); then
tests/compat/core_smoke.py imports every core module and runs ``pipeline.search`` with the real
bundle on the seeded test scene, and the hits must match this Python's. A Python that is not
installed here is skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import python_envs  # noqa: E402

SMOKE = HERE / "core_smoke.py"
# GDAL's Python bindings have no wheels on PyPI: they come with QGIS (and Debian's python3-gdal here).
WITH_QGIS_ONLY = {"osgeo.ogr"}


def smoke(python: str, bundle_dir: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([python, str(SMOKE), str(bundle_dir), str(work)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reference(bundle_dir, tmp_path_factory) -> dict:
    """The same search in this test's own Python."""
    return smoke(sys.executable, bundle_dir, tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("version", ["3.9", "3.12", "3.13"])
def test_core_imports_and_searches(version, bundle_dir, reference, tmp_path):
    try:
        env = python_envs.ensure_env(version, log=lambda _: None)
    except LookupError as exc:
        pytest.skip(str(exc))
    except RuntimeError as exc:  # pip could not install (no network to PyPI, no wheel)
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc).splitlines()[0])
    got = smoke(str(env.python), bundle_dir, tmp_path)
    assert got["python"].startswith(version + ".")
    assert got["modules"] == reference["modules"] and got["forbidden"] == []
    if version != "3.13":  # 3.13 has NumPy 2 wheels only
        assert got["numpy"].startswith("1."), got["numpy"]
    assert set(got["deps_problems"]) <= WITH_QGIS_ONLY
    for query, hits in reference["results"].items():
        assert [h["extent"] for h in got["results"][query]] == [h["extent"] for h in hits], query
        for mine, theirs in zip(got["results"][query], hits):
            assert abs(mine["score"] - theirs["score"]) < 1e-3, (query, mine, theirs)


def _pypi_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def test_the_installer_takes_the_newest_wheel_for_python_39(tmp_path):
    """tokenizers 0.23 (the pin) has no wheel for Python 3.9: the installer's range and wheels-only pip
    take 0.22, where a source build would need a Rust compiler."""
    from rs_vlm_plugin.deps import REQUIREMENTS
    from rs_vlm_plugin.deps.pip_install import install, install_spec

    python = python_envs.find_interpreter("3.9")
    if python is None:
        pytest.skip("Python 3.9 is not installed here")
    if not _pypi_reachable():
        pytest.skip("PyPI cannot be reached from here")
    tokenizers = next(r for r in REQUIREMENTS if r.pip_name == "tokenizers")
    result = install([install_spec(tokenizers)], tmp_path / "site", constraints={}, python=str(python))
    assert result.ok, result.last_lines()
    installed = [p.name for p in (tmp_path / "site").glob("tokenizers-*.dist-info")]
    assert len(installed) == 1 and not installed[0].startswith("tokenizers-0.23"), installed
