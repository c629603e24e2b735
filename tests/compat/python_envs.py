"""Virtual environments of the machine's other Pythons with the core's packages (for the tests).

Each environment lives in ``.cache/pythons/<version>/`` and is made once: ``python -m venv``, then
pip installs only wheels (``--only-binary :all:``) of the core's packages within the ranges the
plugin's dependency installer uses (``rs_vlm_plugin/deps``). rasterio is installed where a wheel
exists; without it the core reads rasters through GDAL or from memory.

    python tests/compat/python_envs.py 3.9 3.12 3.13     # make them ahead of the tests
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENVS = ROOT / ".cache" / "pythons"
PYENV = Path.home() / ".pyenv" / "versions"
# NumPy 1.x where a wheel exists (QGIS's own NumPy); Python 3.13 has only NumPy 2 wheels.
NUMPY = {"3.13": "numpy>=2,<2.3"}
DEFAULT_NUMPY = "numpy>=1.24,<2"
OPTIONAL = ("rasterio>=1.3",)


@dataclass(frozen=True)
class PythonEnv:
    """One prepared environment.

    Attributes:
        version: "3.9", "3.12" ...
        python: Its interpreter.
        packages: Installed distributions, name -> version.
    """

    version: str
    python: Path
    packages: dict


def find_interpreter(version: str) -> Path | None:
    """The pyenv interpreter of a ``major.minor`` version, or None when it is not installed."""
    found = sorted(PYENV.glob(f"{version}.*/bin/python{version}"))
    return found[-1] if found else None


def core_requirements(version: str) -> list[str]:
    """The pip requirements of the core for one Python (the installer's ranges)."""
    sys.path.insert(0, str(ROOT))
    from rs_vlm_plugin.deps import REQUIREMENTS
    from rs_vlm_plugin.deps.pip_install import install_spec

    specs = [install_spec(r) for r in REQUIREMENTS
             if r.pip_name and r.required and r.pip_name != "numpy"]
    return [NUMPY.get(version, DEFAULT_NUMPY), *specs, "pillow"]


def ensure_env(version: str, log=print) -> PythonEnv:
    """The environment of ``version``, made first when missing.

    Raises:
        LookupError: No interpreter of that version on this machine (the reason, as a sentence).
        RuntimeError: pip could not install the packages (its last lines).
    """
    interpreter = find_interpreter(version)
    if interpreter is None:
        raise LookupError(f"Python {version} is not installed here (looked in {PYENV}/{version}.*)")
    folder = ENVS / version
    python = folder / "bin" / "python"
    done = folder / "packages.json"
    if not done.exists():
        if not python.exists():
            subprocess.run([str(interpreter), "-m", "venv", "--clear", str(folder)], check=True)
        pip = [str(python), "-m", "pip", "install", "--only-binary", ":all:", "--disable-pip-version-check",
               "--progress-bar", "off"]
        log(f"[python {version}] installing {' '.join(core_requirements(version))}")
        proc = subprocess.run(pip + core_requirements(version), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pip failed for Python {version}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        numpy = core_requirements(version)[0]
        for spec in OPTIONAL:  # with the NumPy range again, so that it cannot be upgraded past it
            subprocess.run(pip + [numpy, spec], capture_output=True, text=True)  # no wheel: the core does without
        listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True,
                                text=True, check=True).stdout
        done.write_text(json.dumps({p["name"].lower(): p["version"] for p in json.loads(listed)}, indent=1))
    return PythonEnv(version, python, json.loads(done.read_text()))


if __name__ == "__main__":
    for wanted in sys.argv[1:] or ["3.9", "3.12", "3.13"]:
        try:
            env = ensure_env(wanted)
            print(wanted, {k: env.packages[k] for k in sorted(env.packages) if k != "pip"})
        except (LookupError, RuntimeError) as exc:
            print(wanted, "FAILED:", exc)
