"""The manifest of finished inputs beside a batch's output, so that a rerun skips them.

The output is written once, atomically, when every raster is done; until then each finished
raster's outcome is kept in ``<output>.rsvlm-parts/`` and listed in
``<output>.rsvlm-manifest.json`` (its file identity and the job settings). A rerun of the same
command reuses every part whose raster is unchanged (path, size, modification time) and whose
settings and model are the same; the rest is done again. Both go once the output is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ..jobs.identity import file_identity
from .outputs import RasterOutcome, outcome_bytes, outcome_from_bytes

MANIFEST_FORMAT = "rsvlm-batch-manifest"
MANIFEST_SUFFIX = ".rsvlm-manifest.json"
PARTS_SUFFIX = ".rsvlm-parts"


class Manifest:
    """Finished rasters of one output and one set of settings.

    Args:
        output: The batch's output GeoPackage.
        settings: Everything that decides the output besides the rasters (job settings, model
            fingerprint), as text; a manifest of other settings is ignored (and replaced).
    """

    def __init__(self, output: str | Path, settings: str) -> None:
        output = Path(output)
        self.path = output.with_name(output.name + MANIFEST_SUFFIX)
        self.parts = output.with_name(output.name + PARTS_SUFFIX)
        self.settings = hashlib.sha256(settings.encode("utf-8")).hexdigest()
        self.done: dict[str, str] = {}
        try:
            stored = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and stored.get("format") == MANIFEST_FORMAT \
                and stored.get("settings") == self.settings and isinstance(stored.get("done"), dict):
            self.done = {str(k): str(v) for k, v in stored["done"].items()}
        elif self.path.exists() or self.parts.exists():
            self.clear()

    def outcome(self, path: str | Path) -> RasterOutcome | None:
        """The stored outcome of a raster finished earlier and unchanged since, else None."""
        part = self.done.get(file_identity(path))
        if part is None:
            return None
        try:
            return outcome_from_bytes((self.parts / part).read_bytes())
        except (OSError, ValueError, KeyError, TypeError):
            return None  # a part cut short: do the raster again

    def add(self, path: str | Path, outcome: RasterOutcome) -> None:
        """Keep a finished raster's outcome (the part first, then the manifest, each atomically)."""
        identity = file_identity(path)
        part = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:20] + ".npz"
        self.parts.mkdir(exist_ok=True)
        _atomic_write(self.parts / part, outcome_bytes(outcome))
        self.done[identity] = part
        _atomic_write(self.path, json.dumps({"format": MANIFEST_FORMAT, "settings": self.settings,
                                             "done": self.done}, indent=1).encode("utf-8"))

    def clear(self) -> None:
        """Remove the manifest and the parts (once the output is written)."""
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)
        self.done = {}


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)
