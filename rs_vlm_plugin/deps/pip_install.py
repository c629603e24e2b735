"""Installing missing dependencies with pip into the plugin-private folder.

Standard library only. Every distribution QGIS already has is pinned to its installed version
(:func:`host_constraints`) so that pip never replaces a package QGIS relies on. Nothing here
runs unless :func:`install` (or :func:`install_missing`) is called.
"""

from __future__ import annotations

import csv
import importlib
import importlib.metadata
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .check import ONNXRUNTIME_GPU, DependencyReport, DependencyState, Requirement

__all__ = [
    "canonical_name", "host_constraints", "constraints_text", "cuda_available", "install_spec",
    "pip_specs", "python_candidates", "find_python", "pip_command", "InstallResult",
    "explain_pip_failure", "remove_host_duplicates", "install", "install_missing",
]


def canonical_name(name: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return canonical_name(re.split(r"[<>=!~;\[ ]", spec.strip(), maxsplit=1)[0])


_PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")


def host_constraints(exclude: Iterable[str] = (), paths: Sequence[str] | None = None) -> dict[str, str]:
    """Pins of every distribution already installed, so that pip installs none other beside it.

    Args:
        exclude: Names of the distributions being installed (they must stay free to choose).
        paths: Where to look; default ``sys.path`` without the private folders.

    Returns:
        ``{canonical name: version}``, the first found on the path winning (the one that
        imports). Local labels (``+dfsg``) are dropped, as releases on an index have none;
        versions pip cannot parse are left out.
    """
    skip = {canonical_name(n) for n in exclude}
    search = [p for p in (sys.path if paths is None else paths) if "rs_vlm_deps" not in Path(p or ".").parts]
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=list(search)):
        try:
            name, version = dist.metadata["Name"], dist.version
        except Exception:  # noqa: BLE001 - a broken .dist-info is skipped
            continue
        if not name or not version:
            continue
        key = canonical_name(name)
        version = version.split("+", 1)[0]
        if key in skip or key in pins or not _PEP440.match(version):
            continue
        pins[key] = version
    return pins


def constraints_text(pins: dict[str, str]) -> str:
    """A pip constraints file of ``name==version`` lines."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def cuda_available(override: bool | None = None, nvidia_smi: str | None = "nvidia-smi",
                   proc_gpus: str | os.PathLike = "/proc/driver/nvidia/gpus") -> bool:
    """Whether an NVIDIA GPU with a driver is present (then ``onnxruntime-gpu`` is installed).

    Args:
        override: True or False to decide without looking (tests, or a user's choice).
        nvidia_smi: The nvidia-smi program to ask (``nvidia-smi -L`` lists the GPUs); None to skip.
        proc_gpus: The Linux driver's folder of GPUs; one entry per GPU.
    """
    if override is not None:
        return override
    if platform.system() == "Darwin":
        return False
    program = shutil.which(nvidia_smi) if nvidia_smi else None
    if program:
        try:
            done = subprocess.run([program, "-L"], capture_output=True, text=True, timeout=15)
            if done.returncode == 0 and re.search(r"^GPU \d+", done.stdout, re.MULTILINE):
                return True
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return any(Path(proc_gpus).iterdir())
    except OSError:
        return False


def install_spec(requirement: Requirement, cuda: bool = False) -> str:
    """The pip requirement that installs ``requirement`` beside QGIS's packages.

    An exact pin becomes a range up to it (``shapely>=1.8,<=2.2.0``): the pinned release is the
    tested one, but it may need a newer NumPy than QGIS has (shapely 2.2 needs NumPy 1.26,
    Debian 12's QGIS has 1.24), and then the newest older release that fits is the right one.
    On a CUDA machine onnxruntime becomes ``onnxruntime-gpu`` (whose releases lag behind).
    """
    name = requirement.pip_name or requirement.import_name
    if requirement.pip_name == "onnxruntime" and cuda:
        name = ONNXRUNTIME_GPU
    pin = requirement.pin or name
    exact = re.fullmatch(r"[A-Za-z0-9_.\-]+==([^,;\s]+)", pin)
    if exact is None:
        return name + pin[len(requirement.pip_name):] if requirement.pip_name else pin
    low = f">={requirement.minimum}," if requirement.minimum else ""
    return f"{name}{low}<={exact.group(1)}"


def pip_specs(states: Iterable[DependencyState], cuda: bool = False) -> list[str]:
    """The pip requirements that fix ``states`` (see :func:`install_spec`)."""
    return [install_spec(state.requirement, cuda) for state in states]


# The pip run -------------------------------------------------------------------------------

def _python_version_of(candidate: str) -> tuple[int, int] | None:
    try:
        done = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.fullmatch(r"(\d+)\.(\d+)", done.stdout.strip()) if done.returncode == 0 else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def python_candidates() -> list[str]:
    """Programs that may be this Python's interpreter, most likely first."""
    major, minor = sys.version_info[:2]
    prefix = Path(sys.exec_prefix)
    names = [sys.executable, getattr(sys, "_base_executable", "")]
    if os.name == "nt":
        names += [str(prefix / "python.exe"), str(prefix / "python3.exe"), str(Path(sys.base_exec_prefix) / "python.exe")]
    else:
        for base in (prefix, Path(sys.base_exec_prefix)):
            names += [str(base / "bin" / f"python{major}.{minor}"), str(base / "bin" / f"python{major}")]
    names += [shutil.which(f"python{major}.{minor}") or "", shutil.which(f"python{major}") or "",
              shutil.which("python") or ""]
    seen, out = set(), []
    for name in names:
        if name and name not in seen and Path(name).name.lower().startswith("python") and Path(name).exists():
            seen.add(name)
            out.append(name)
    return out


def find_python() -> str | None:
    """The Python interpreter to run pip with: one of this Python's version.

    Inside QGIS ``sys.executable`` is the QGIS program, so the candidates are this interpreter
    when it is a Python, ``sys._base_executable``, ``<exec_prefix>/bin/python3.X`` (Windows:
    ``python.exe`` in the exec prefix) and ``python3.X`` / ``python3`` on the PATH, each run to
    check that it is the same major.minor version.

    Returns:
        The path, or None when no matching interpreter was found.
    """
    for candidate in python_candidates():
        if _python_version_of(candidate) == tuple(sys.version_info[:2]):
            return candidate
    return None


def pip_command(python: str, target: str | os.PathLike, constraint_file: str | os.PathLike,
                requirements: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The pip command line installing ``requirements`` into ``target`` under the constraints.

    Wheels only (``--only-binary :all:``): where the newest release in a range has no wheel for this
    platform and Python (tokenizers 0.23 on Python 3.9, onnxruntime 1.32 on Intel Macs), pip takes the
    newest one that has, instead of trying to compile a source package (no compiler on users' machines).
    """
    return [python, "-m", "pip", "install", "--target", str(target), "--constraint", str(constraint_file),
            "--only-binary", ":all:", "--no-warn-script-location", "--disable-pip-version-check", "--progress-bar",
            "off", "--no-input", "--upgrade", *extra, *requirements]


@dataclass
class InstallResult:
    """What :func:`install` did.

    Attributes:
        ok: Whether everything was installed.
        message: A sentence for the user (what happened, what to do).
        returncode: pip's exit code (None when pip did not run to the end).
        canceled: Whether the user stopped it.
        lines: pip's output.
        command: The command that ran.
        removed: Distributions removed from the folder because QGIS already has them.
    """

    ok: bool
    message: str
    returncode: int | None = None
    canceled: bool = False
    lines: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def last_lines(self, count: int = 20) -> str:
        """pip's last lines, for the log."""
        return "\n".join(self.lines[-count:])


_NETWORK = ("Failed to establish a new connection", "Temporary failure in name resolution", "Name or service not known",
            "Network is unreachable", "NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ProxyError",
            "Connection refused", "Could not fetch URL", "SSLError", "getaddrinfo failed")


def explain_pip_failure(lines: Sequence[str], returncode: int | None, python: str, target: str | os.PathLike) -> str:
    """The sentence for a failed pip run, recognised from its output.

    Args:
        lines: pip's output lines.
        returncode: Its exit code.
        python: The interpreter that ran it.
        target: The folder it installed into.
    """
    text = "\n".join(lines)
    version = "%d.%d" % sys.version_info[:2]
    if re.search(r"No module named pip\b", text):
        return (f"pip is not available for {python}, so nothing could be installed; install pip for Python "
                f"{version} (Debian/Ubuntu: sudo apt install python3-pip; Windows: add python3-pip in the "
                "OSGeo4W installer) and click Install again.")
    if "ResolutionImpossible" in text or "conflicting dependencies" in text:
        causes = _block_after(lines, "The conflict is caused by:")
        detail = f" ({'; '.join(causes)})" if causes else ""
        return ("The packages RS-VLM needs conflict with versions QGIS already has" + detail + ", so nothing "
                "was installed; update QGIS, or install the packages listed in the RS-VLM log by hand in a "
                "version that fits.")
    if any(marker in text for marker in _NETWORK):
        return ("pip could not reach the package index (no network, or a proxy in the way), so nothing was "
                "installed; connect to the internet (set HTTPS_PROXY if you use a proxy) and click Install again.")
    missing = re.search(r"No matching distribution found for (\S+)", text)
    if missing and "(from versions: none)" in text:
        return (f"pip found no release of {missing.group(1)} at all, so nothing was installed: either there is "
                "no network connection (connect to the internet; set HTTPS_PROXY if you use a proxy) or the "
                "package index pip uses has none; then click Install again.")
    if missing:
        return (f"No release of {missing.group(1)} fits Python {version} on {platform.system()} "
                f"{platform.machine()}, so nothing was installed; install it by hand in a version made for this "
                "system (see the RS-VLM log for what pip found) or use a newer QGIS.")
    if "Permission denied" in text or "[Errno 13]" in text:
        return f"pip may not write to {target}; make that folder writable for your user and click Install again."
    if "No space left on device" in text:
        return f"The disk holding {target} is full; free some space and click Install again."
    if "Failed building wheel" in text or "subprocess-exited-with-error" in text:
        return ("A package had no ready-made wheel for this system and building it from source failed, so "
                "nothing was installed; install a QGIS with a Python that has wheels (see the RS-VLM log).")
    last = next((line.strip() for line in reversed(lines) if line.strip().startswith("ERROR")), None) or \
        next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    return (f"pip failed (exit code {returncode}): {last} See pip's output in the RS-VLM log, fix the cause "
            "and click Install again.")


def _block_after(lines: Sequence[str], heading: str) -> list[str]:
    for index, line in enumerate(lines):
        if line.strip() == heading:
            block = []
            for following in lines[index + 1:]:
                if not following.strip():
                    break
                block.append(following.strip())
            return block
    return []


def remove_host_duplicates(target: str | os.PathLike, host: dict[str, str], keep: Iterable[str]) -> list[str]:
    """Delete from ``target`` the distributions QGIS already has (pip installs them again with ``--target``).

    pip ignores installed packages when it installs into a folder, so a dependency such as
    numpy lands there too, pinned to QGIS's version; with the folder first on ``sys.path`` it
    would shadow QGIS's copy. Its files are listed in the distribution's RECORD.

    Returns:
        The names removed.
    """
    root = Path(target).resolve()
    keep = {canonical_name(k) for k in keep}
    removed = []
    for info in sorted(root.glob("*.dist-info")):
        name = canonical_name(info.name[: -len(".dist-info")].rsplit("-", 1)[0])
        if name in keep or name not in host:
            continue
        record = info / "RECORD"
        paths = []
        if record.is_file():
            with record.open(encoding="utf-8", errors="replace", newline="") as stream:
                paths = [(root / row[0]).resolve() for row in csv.reader(stream) if row and row[0]]
        for path in paths:
            if root in path.parents and path.is_file():
                path.unlink()
        for folder in sorted({p.parent for p in paths if root in p.parents}, key=lambda p: len(p.parts), reverse=True):
            while folder != root and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                folder = folder.parent
        shutil.rmtree(info, ignore_errors=True)
        removed.append(name)
    return removed


def install(requirements: Sequence[str], target: str | os.PathLike, *,
            constraints: dict[str, str] | None = None, python: str | None = None,
            on_line: Callable[[str], None] | None = None, is_canceled: Callable[[], bool] | None = None,
            extra_args: Sequence[str] = (), poll_s: float = 0.1) -> InstallResult:
    """Install ``requirements`` with pip into ``target``, never replacing what QGIS has.

    Args:
        requirements: pip requirements (``"onnxruntime==1.32.0"``).
        target: The private folder (created when missing).
        constraints: Pins of the host's packages; default :func:`host_constraints` without the
            requirements' own names.
        python: The interpreter to run pip with; default :func:`find_python`.
        on_line: Called with each line of pip's output, from the calling thread.
        is_canceled: Polled while pip runs; when it returns True pip is stopped.
        extra_args: More pip arguments (an index URL ...).
        poll_s: How often to poll for cancellation, in seconds.

    Returns:
        The result; ``message`` is a sentence saying what happened and what to do.
    """
    names = [_requirement_name(r) for r in requirements]
    python = python or find_python()
    if python is None:
        return InstallResult(False, f"No Python {sys.version_info[0]}.{sys.version_info[1]} interpreter was found to "
                                    "run pip with (QGIS's own is needed); install the packages listed in the RS-VLM "
                                    "log by hand.")
    pins = host_constraints(exclude=names) if constraints is None else {
        k: v for k, v in constraints.items() if canonical_name(k) not in set(names)}
    folder = Path(target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return InstallResult(False, f"The folder {folder} cannot be created ({exc}); make its parent writable "
                                    "and click Install again.")
    handle, constraint_file = tempfile.mkstemp(prefix="rs_vlm_constraints_", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(constraints_text(pins))
    command = pip_command(python, folder, constraint_file, requirements, extra_args)
    try:
        result = _run(command, folder, python, on_line, is_canceled, poll_s)
    finally:
        os.unlink(constraint_file)
    if result.ok:
        result.removed = remove_host_duplicates(folder, pins, keep=names)
    return result


def _run(command: list[str], folder: Path, python: str, on_line, is_canceled, poll_s: float) -> InstallResult:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)  # QGIS's own path entries (and the private folder) must not mislead pip
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 text=True, encoding="utf-8", errors="replace", bufsize=1, env=env)
    except OSError as exc:
        return InstallResult(False, f"{python} could not be started ({exc}); install the packages listed in the "
                                    "RS-VLM log by hand.", command=command)
    pending: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            pending.put(line.rstrip("\r\n"))
        pending.put(None)

    threading.Thread(target=pump, daemon=True).start()
    lines: list[str] = []
    while True:
        if is_canceled is not None and is_canceled():
            child.kill()
            child.wait()
            return InstallResult(False, "The installation was cancelled; packages pip had already finished stay "
                                        f"in {folder}. Click Install again to finish it.", canceled=True,
                                 lines=lines, command=command)
        try:
            line = pending.get(timeout=poll_s)
        except queue.Empty:
            continue
        if line is None:
            break
        lines.append(line)
        if on_line is not None:
            on_line(line)
    code = child.wait()
    if code != 0:
        return InstallResult(False, explain_pip_failure(lines, code, python, folder), returncode=code,
                             lines=lines, command=command)
    return InstallResult(True, f"The packages were installed into {folder}; restart QGIS (or reload the RS-VLM "
                               "plugin) to use them.", returncode=0, lines=lines, command=command)


def install_missing(report: DependencyReport, target: str | os.PathLike, *, cuda: bool | None = None,
                    on_line: Callable[[str], None] | None = None, is_canceled: Callable[[], bool] | None = None,
                    python: str | None = None, extra_args: Sequence[str] = ()) -> InstallResult:
    """Install what ``report`` finds missing, onnxruntime-gpu on a CUDA machine.

    When no onnxruntime-gpu release fits this system the CPU onnxruntime is installed instead
    (the plugin then runs on the CPU).

    Args:
        report: The result of :func:`check`.
        target: The private folder.
        cuda: Whether to install the GPU build; default :func:`cuda_available`.
        on_line: Called with each line of pip's output (and the installer's own notes).
        is_canceled: Polled while pip runs.
        python: The interpreter to run pip with; default :func:`find_python`.
        extra_args: More pip arguments.
    """
    states = report.to_install
    if not states:
        return InstallResult(not report.problems, report.summary())
    cuda = cuda_available() if cuda is None else cuda
    result = install(pip_specs(states, cuda), target, on_line=on_line, is_canceled=is_canceled, python=python,
                     extra_args=extra_args)
    gpu_wanted = cuda and any(s.requirement.pip_name == "onnxruntime" for s in states)
    if gpu_wanted and not result.ok and not result.canceled and ONNXRUNTIME_GPU in result.message:
        if on_line is not None:
            on_line(f"No {ONNXRUNTIME_GPU} release fits this system; installing the CPU onnxruntime instead.")
        result = install(pip_specs(states, False), target, on_line=on_line, is_canceled=is_canceled, python=python,
                         extra_args=extra_args)
    return result
