"""What the provider and its algorithms share: the provider's id, the icon, file filters, limits and
messages. A leaf: it imports nothing of the plugin, so every module of Processing (and the
plugin's toolbar) may import it without going through the provider or the algorithms."""

from __future__ import annotations

from pathlib import Path

PROVIDER_ID = "rsvlm"
ICON_PATH = Path(__file__).resolve().parents[2] / "resources" / "icon.svg"
GPKG_FILTER = "GeoPackage (*.gpkg *.GPKG)"
MAX_TILE_BUDGET = 4096
"""The largest DRIS budget a Processing algorithm accepts (the panel's is lower: ``dock.MAX_TILE_BUDGET``)."""
CANCELLED = "Cancelled; no output was written."
