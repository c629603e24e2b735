"""A Dask cluster the project did not start: ``dask scheduler`` and ``dask worker`` as their own
processes, in another working directory, without ``PYTHONPATH``, from a virtual environment that
gets the core only by ``pip install`` of its wheel (as a user's node would).

The node's environment is a fresh ``python -m venv --system-site-packages``; a ``.pth`` file adds
the test interpreter's site-packages (dask, onnxruntime, ...: what ``pip install`` of the wheel's
requirements would have put there; pip, run with ``--no-index``, checks that they satisfy the
wheel's pins). The checkout itself is never on the node's path: :func:`node_env` checks that the
bare environment cannot import ``rs_vlm_plugin``.
"""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRELOAD = "rs_vlm_plugin.core.distributed.preload"
START_TIMEOUT_S = 120.0


def node_env(folder: Path, wheel: Path | None) -> Path:
    """A virtual environment in ``folder`` with the project's dependencies and, if given, the core's
    wheel installed by pip; returns its python."""
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--system-site-packages",
                    "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, cwd=folder, env=clean_env()).stdout.strip()
    dependencies = [p for p in site.getsitepackages() if Path(p).is_dir() and Path(p).resolve() != ROOT]
    (Path(purelib) / "rs_vlm_test_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    bare = subprocess.run([str(python), "-c", "import rs_vlm_plugin"], capture_output=True, text=True, cwd=folder,
                          env=clean_env())
    assert bare.returncode != 0 and "No module named 'rs_vlm_plugin'" in bare.stderr, "the node sees the checkout"
    if wheel is not None:
        subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "-q",
                        "--disable-pip-version-check", str(wheel)], check=True, timeout=300, cwd=folder,
                       env=clean_env())
    return python


def clean_env() -> dict:
    """The environment of the cluster's processes: this one without PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


class ExternalCluster:
    """A scheduler and workers, each its own process (workers without a nanny: kill -9 kills them).

    Args:
        folder: Working directory and logs of the processes (not the checkout).
        python: The node environment's interpreter.
    """

    def __init__(self, folder: Path, python: Path) -> None:
        self.folder = folder
        self.python = python
        self.scheduler_file = folder / "scheduler.json"
        self.workers: list[subprocess.Popen] = []
        self.scheduler = self._spawn("scheduler", ["scheduler", "--scheduler-file", str(self.scheduler_file),
                                                   "--host", "127.0.0.1", "--port", "0", "--no-dashboard"])
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the file appears before the scheduler has finished writing it
            try:
                self.address = json.loads(self.scheduler_file.read_text())["address"]
                break
            except (OSError, ValueError, KeyError):
                if self.scheduler.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the scheduler did not start: {self.log('scheduler')}") from None
                time.sleep(0.2)

    def _spawn(self, name: str, argv: list[str], python: Path | None = None) -> subprocess.Popen:
        with open(self.folder / f"{name}.log", "ab") as log:
            return subprocess.Popen([str(python or self.python), "-m", "dask", *argv], cwd=self.folder,
                                    env=clean_env(), stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        """A process's log (its last 3000 characters)."""
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def add_worker(self, python: Path | None = None, preload: bool = True) -> subprocess.Popen:
        """Start one more worker (1 thread) and wait until the scheduler counts it."""
        argv = ["worker", "--scheduler-file", str(self.scheduler_file), "--nthreads", "1", "--no-nanny",
                "--no-dashboard", "--host", "127.0.0.1", "--death-timeout", "30"]
        worker = self._spawn(f"worker{len(self.workers)}", argv + (["--preload", PRELOAD] if preload else []), python)
        self.workers.append(worker)
        self.wait_for_workers(len(self.alive()))
        return worker

    def alive(self) -> list[subprocess.Popen]:
        """The workers still running."""
        return [w for w in self.workers if w.poll() is None]

    def ensure_workers(self, n: int) -> None:
        """Start workers until ``n`` run."""
        while len(self.alive()) < n:
            self.add_worker()

    def wait_for_workers(self, n: int) -> None:
        """Wait until the scheduler has exactly ``n`` workers."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.count_workers() != n:
            dead = [w for w in self.workers if w.poll() is not None and w.returncode != -signal.SIGKILL]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"workers did not join: {self.log(f'worker{len(self.workers) - 1}')}")
            time.sleep(0.3)

    def count_workers(self) -> int:
        """Workers the scheduler knows (asked by a short-lived client of this process)."""
        return len(self.scheduler_info().get("workers", {}))

    def scheduler_info(self) -> dict:
        """The scheduler's view of the cluster."""
        from dask.distributed import Client

        with Client(self.address, timeout="20s", set_as_default=False) as client:
            return client.scheduler_info()

    def task_prefixes(self) -> set[str]:
        """Names of every task function the scheduler has ever seen."""
        from dask.distributed import Client

        with Client(self.address, timeout="20s", set_as_default=False) as client:
            return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))

    def close(self) -> None:
        """Stop every process this cluster started (a worker that lost its scheduler does not wait for
        SIGTERM to finish reconnecting: it gets 5 s)."""
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
