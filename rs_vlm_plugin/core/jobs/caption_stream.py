"""Captions decoded while the tiles are still being encoded, so a job never holds every tile's tokens.

A describe job used to keep the 210 tokens of every tile (about 320 kB each) until the decoder
ran over all of them: 1.6 GB for a uniform caption of a 10k x 10k raster, growing with the
raster. :class:`CaptionStream` takes the encoder's batches as they come, decodes each full block
of :data:`CAPTION_BLOCK` tiles at once and keeps only what the later stages need: the global
embedding (knowledge-base ranking) and the mean expert weights (routing). The blocks are the
ones :meth:`ModelBundle.caption` cuts from the whole job (32 tiles, in order), so the captions
are the same, bit for bit, as when every token was kept.
"""

from __future__ import annotations

import numpy as np

from ..bundle import ModelBundle
from ..progress import ProgressBackend
from .grounding import grounded_captions

CAPTION_BLOCK = 32
"""Tiles per decoder call; :meth:`ModelBundle.caption` decodes in blocks of this many."""
KEPT_TIERS = ("embedding", "routing")
"""What stays of a tile's tiers once its caption is decoded."""


class CaptionStream:
    """Decodes captions block by block from batches of encoded tiles.

    Args:
        bundle: The model (without a decoder, nothing is decoded and only the kept tiers stay).
        progress: Asked for cancellation between decoder blocks.
    """

    def __init__(self, bundle: ModelBundle, progress: ProgressBackend | None = None) -> None:
        self.bundle = bundle
        self.progress = progress
        self.captions: list[str] = []
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0

    @property
    def pending(self) -> int:
        """Tiles encoded whose captions are not decoded yet."""
        return self._pending_rows

    def add(self, tiles: list, tiers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Take one batch's tiers; decode every full block; give back the tiers to keep.

        Args:
            tiles: The batch's tiles (only their number matters).
            tiers: Their tiers, as :meth:`ModelBundle.encode_tiers` returns them.
        """
        kept = {k: v for k, v in tiers.items() if k in KEPT_TIERS}
        if not self.bundle.has_decoder:
            return kept
        self._pending.append({k: tiers[k] for k in ("embedding", "regions", "objects")})
        self._pending_rows += len(tiles)
        while self._pending_rows >= CAPTION_BLOCK:
            self._decode(CAPTION_BLOCK)
        return kept

    def finish(self) -> list[str] | None:
        """Decode the tiles left (fewer than a block); the captions of all tiles, in order (None
        without a decoder)."""
        if not self.bundle.has_decoder:
            return None
        if self._pending_rows:
            self._decode(self._pending_rows)
        return self.captions

    def _decode(self, rows: int) -> None:
        block = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        head = {k: v[:rows] for k, v in block.items()}
        rest = {k: v[rows:] for k, v in block.items()}
        self.captions += grounded_captions(self.bundle, head, progress=self.progress)
        self._pending_rows -= rows
        self._pending = [rest] if self._pending_rows else []
