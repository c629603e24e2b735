"""The plugin's Python dependencies: what it needs, whether they import, where private ones live.

Standard library only, so that it imports (and explains) when numpy or anything else is
missing. QGIS ships its own Python with numpy and GDAL; what it lacks (onnxruntime,
tokenizers, shapely ...) is installed by :mod:`.pip_install` into a plugin-private folder
(:func:`private_site_dir`). Nothing here installs or touches the network.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

OK = "ok"
MISSING = "missing"
TOO_OLD = "too old"
TOO_NEW = "too new"
BROKEN = "broken"

__all__ = [
    "OK", "MISSING", "TOO_OLD", "TOO_NEW", "BROKEN", "Requirement", "REQUIREMENTS",
    "ONNXRUNTIME_GPU", "DependencyState", "DependencyReport", "parse_version", "check_one", "check",
    "private_site_dir", "activate_private_site",
]


@dataclass(frozen=True)
class Requirement:
    """One Python package the plugin imports at run time.

    Attributes:
        import_name: The module to import (``onnxruntime``, ``osgeo.ogr``).
        pip_name: The distribution pip installs; None when pip cannot provide it (it comes with QGIS).
        pin: The pip requirement installed (requirements.txt's runtime section).
        minimum: The oldest version that works (inclusive); None for any.
        below: The first version that does not work (exclusive); None for none.
        why: What the plugin does with it, for the user.
        required: Whether the plugin inside QGIS cannot work without it.
    """

    import_name: str
    pip_name: str | None
    pin: str | None
    minimum: str | None
    below: str | None
    why: str
    required: bool = True


REQUIREMENTS: tuple[Requirement, ...] = (
    # QGIS's own NumPy, never replaced (its GDAL is built against it): 1.x on QGIS 3, 2.x on QGIS 4's
    # Python 3.13, which has no NumPy 1 wheels; the core runs on both.
    Requirement("numpy", "numpy", "numpy>=1.24,<2", "1.24", None,
                "holds pixels and embeddings as arrays (QGIS's own NumPy: its GDAL is built against it)"),
    Requirement("onnxruntime", "onnxruntime", "onnxruntime==1.32.0", "1.14", None,
                "runs the vision-language model (ONNX, opset 17)"),
    Requirement("tokenizers", "tokenizers", "tokenizers==0.23.3", "0.13", None,
                "turns search text into tokens for the text model"),
    Requirement("shapely", "shapely", "shapely==2.2.0", "1.8", None,
                "keeps the tiles that touch a mask of selected polygons"),
    Requirement("osgeo.ogr", None, None, None, None,
                "writes results to GeoPackage (GDAL's Python bindings, part of QGIS)"),
    Requirement("rasterio", "rasterio", "rasterio>=1.3", "1.3", None,
                "reads raster files in the command line only; inside QGIS layers are read through QGIS",
                required=False),
    Requirement("tqdm", "tqdm", "tqdm==4.70.1", None, None,
                "draws progress bars in the command line only", required=False),
    Requirement("dask.distributed", "dask", "dask[distributed]==2026.8.0", "2023.1", None,
                "runs batch captioning and index building on a Dask cluster (a scheduler address in Batch caption "
                "layers and Build embedding index, --dask on the command line); optional, never installed by the "
                "plugin: install the same version on every machine of the cluster", required=False),
)

ONNXRUNTIME_GPU = "onnxruntime-gpu"


@dataclass
class DependencyState:
    """What :func:`check` found for one requirement.

    Attributes:
        requirement: The requirement checked.
        status: ``ok``, ``missing``, ``too old``, ``too new`` or ``broken``.
        version: The version found, when it imported (or its metadata says).
        error: The import error, for ``missing`` and ``broken``.
        location: Where the module was imported from.
    """

    requirement: Requirement
    status: str
    version: str | None = None
    error: str | None = None
    location: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the requirement is usable."""
        return self.status == OK

    def describe(self) -> str:
        """One line for the user: name, what is wrong, why it is needed."""
        name = self.requirement.pip_name or self.requirement.import_name
        if self.status == OK:
            return f"{name} {self.version or ''}".strip() + " is installed."
        if self.status == MISSING:
            what = "is not installed"
        elif self.status == TOO_OLD:
            what = f"is too old ({self.version}; {self.requirement.minimum} or newer is needed)"
        elif self.status == TOO_NEW:
            what = f"is too new ({self.version}; a version below {self.requirement.below} is needed)"
        else:
            what = f"does not import ({self.error})"
        return f"{name} {what}: it {self.requirement.why}."

    @property
    def installable(self) -> bool:
        """Whether installing into the private folder can fix it.

        Packages without a pip name (GDAL) and NumPy (QGIS has already loaded its own) cannot.
        """
        return not self.ok and self.requirement.pip_name is not None and self.requirement.import_name != "numpy"


@dataclass
class DependencyReport:
    """The result of :func:`check`: one state per requirement."""

    states: list[DependencyState] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every required package is usable."""
        return not self.problems

    @property
    def problems(self) -> list[DependencyState]:
        """The required packages that are not usable."""
        return [s for s in self.states if s.requirement.required and not s.ok]

    @property
    def to_install(self) -> list[DependencyState]:
        """The required packages that pip can fix."""
        return [s for s in self.problems if s.installable]

    @property
    def not_installable(self) -> list[DependencyState]:
        """The required packages that pip cannot fix here (they come with QGIS)."""
        return [s for s in self.problems if not s.installable]

    def state(self, import_name: str) -> DependencyState:
        """The state of one requirement, by import name."""
        return next(s for s in self.states if s.requirement.import_name == import_name)

    def summary(self) -> str:
        """Sentences for the user: what is missing, why, and what to do."""
        if self.ok:
            return "All the Python packages RS-VLM needs are installed."
        lines = [s.describe() for s in self.problems]
        if self.to_install:
            lines.append("Click \"Install dependencies\" to install "
                         f"{', '.join(s.requirement.pip_name for s in self.to_install)} into RS-VLM's own folder "
                         "(QGIS's packages stay untouched), then restart QGIS.")
        for state in self.not_installable:
            if state.requirement.import_name == "numpy":
                lines.append("NumPy belongs to QGIS and cannot be replaced by the plugin; install a QGIS whose "
                             f"Python has {state.requirement.pin}.")
            else:
                lines.append(f"{state.requirement.import_name} comes with QGIS; reinstall QGIS with its "
                             "Python bindings of GDAL (Debian/Ubuntu: python3-gdal).")
        return "\n".join(lines)


def parse_version(text: str) -> tuple[int, ...]:
    """The release numbers of a version string (``"1.24.2rc1"`` -> ``(1, 24, 2)``)."""
    numbers = []
    for part in text.strip().lstrip("vV").split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def _compare(a: str, b: str) -> int:
    x, y = parse_version(a), parse_version(b)
    width = max(len(x), len(y))
    x, y = x + (0,) * (width - len(x)), y + (0,) * (width - len(y))
    return (x > y) - (x < y)


def _version_of(module, requirement: Requirement) -> str | None:
    version = getattr(module, "__version__", None)
    if isinstance(version, str) and version:
        return version
    top = requirement.pip_name or requirement.import_name.split(".")[0]
    try:
        return importlib.metadata.version(top)
    except Exception:  # noqa: BLE001 - any metadata problem means "unknown"
        return None


def check_one(requirement: Requirement) -> DependencyState:
    """Import one requirement and judge its version; never raises.

    An import that fails with anything but "no module named <it>" is ``broken`` (a NumPy 2 ABI
    error, a missing shared library ...), with the error kept.
    """
    try:
        module = importlib.import_module(requirement.import_name)
    except ModuleNotFoundError as exc:
        top = requirement.import_name.split(".")[0]
        if exc.name in (requirement.import_name, top):
            return DependencyState(requirement, MISSING, error=str(exc))
        return DependencyState(requirement, BROKEN, error=f"{type(exc).__name__}: {exc}")
    except BaseException as exc:  # noqa: BLE001 - a broken extension can raise anything, even SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        return DependencyState(requirement, BROKEN, error=f"{type(exc).__name__}: {exc}")
    version = _version_of(module, requirement)
    location = getattr(module, "__file__", None)
    status = OK
    if version is not None:
        if requirement.minimum is not None and _compare(version, requirement.minimum) < 0:
            status = TOO_OLD
        elif requirement.below is not None and _compare(version, requirement.below) >= 0:
            status = TOO_NEW
    return DependencyState(requirement, status, version=version, location=location)


def check(requirements: Iterable[Requirement] = REQUIREMENTS) -> DependencyReport:
    """Import every requirement and report what is usable; never raises.

    Args:
        requirements: What to check; default the plugin's :data:`REQUIREMENTS`.
    """
    return DependencyReport([check_one(r) for r in requirements])


# Where private packages live ---------------------------------------------------------------

def private_site_dir(settings_dir: str | os.PathLike) -> Path:
    """The plugin-private package folder for this Python version.

    Args:
        settings_dir: The QGIS profile folder (``QgsApplication.qgisSettingsDirPath()``).

    Returns:
        ``<settings_dir>/python/rs_vlm_deps/py<major>.<minor>``: one folder per Python version,
        because compiled packages only fit the Python they were built for.
    """
    return Path(settings_dir) / "python" / "rs_vlm_deps" / f"py{sys.version_info[0]}.{sys.version_info[1]}"


def activate_private_site(folder: str | os.PathLike) -> bool:
    """Put the private folder first on ``sys.path`` when it exists (so an earlier install is used).

    First, so that a package installed there because QGIS's copy was too old or broken wins;
    the installer removes from it every package that QGIS already has (see :func:`install`).

    Returns:
        Whether the folder exists and is on ``sys.path``.
    """
    path = Path(folder)
    if not path.is_dir():
        return False
    text = str(path)
    if text not in sys.path:
        sys.path.insert(0, text)
        importlib.invalidate_caches()
    return True
