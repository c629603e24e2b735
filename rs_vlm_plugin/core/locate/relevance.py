"""Relevance maps: how strongly each object-token cell of a tile shows what the query names.

The object tier was aligned with object names only (the ten VHR-10 classes), so a raw cosine
similarity is high for any object name almost anywhere. The relevance of a cell is therefore a
probability against background: a softmax, at the model's temperature, of the cell's similarity
with the query against its similarities with a set of background texts (ground cover and
land-use words), the query's own near-synonyms among them counting for the query. Background
cells then score low, and one threshold serves every query; it was calibrated on the VHR-10
training boxes (cells inside boxes against cells outside; a trained model's own threshold comes
with its manifest, ``rs_vlm_train.locate_stage.calibrate_locate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RsVlmError

if TYPE_CHECKING:
    from ..bundle import ModelBundle

OBJECT_PROMPTS = ("a {}.", "an aerial image of a {}.", "there is a {} in the image.")
"""The prompts the object tier was aligned with at training time (``rs_vlm_train.data.OBJECT_PROMPTS``)."""
BACKGROUND_TEXTS = ("background", "an aerial image of the ground", "bare ground", "trees", "grass", "a road", "water",
                    "buildings", "a parking lot", "empty land", "farmland", "forest", "a field", "a river", "the sea")
"""What a cell shows when it shows nothing the user asked for."""
BACKGROUND_PROMPTS = ("{}", "an aerial image of {}.")
FAMILY_COSINE = 0.7
"""Background texts at least this close to the query stand with it ("a road" for "roads")."""
MANIFEST_KEY = "locate"


@dataclass(frozen=True)
class LocateConfig:
    """How relevance maps become outlines.

    Attributes:
        threshold: Cells at least this relevant are part of an outline. A bundle's manifest
            gives its own (``"locate"``: the relevance that maximised F2, recall weighted, of
            cells under boxes of the queried class on VHR-10 training crops,
            ``rs_vlm_train.locate_stage.calibrate_locate``); 0.99 did so for version 3 on 60 VHR-10
            training images (135,664 cells, 10 class queries).
        temperature: Multiplies the model's logit scale in the softmax against background.
        max_box_cells: Blobs of at most this many cells may be drawn as a box ...
        min_box_fill: ... when they fill at least this share of their bounding box (compact).
        max_outlines: Outlines kept, best first.
        min_cells: Blobs smaller than this many cells are dropped (isolated noisy cells).
        size_prior: When the query names an object class of known size (:mod:`.sizes`), split
            blobs at their local maxima into one box of that size per object (box AP50 on the
            held-back VHR-10 mosaics' native grid: 0.027 without, 0.068 with).
    """

    threshold: float = 0.99
    temperature: float = 1.0
    max_box_cells: int = 64
    min_box_fill: float = 0.5
    max_outlines: int = 200
    min_cells: int = 1
    size_prior: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise RsVlmError(f"The outline threshold must be between 0 and 1, not {self.threshold}.")
        if self.max_outlines < 1 or self.min_cells < 1 or self.max_box_cells < 1:
            raise RsVlmError("The outline counts (max_outlines, min_cells, max_box_cells) must be at least 1.")

    @classmethod
    def for_bundle(cls, bundle: "ModelBundle") -> "LocateConfig":
        """The defaults, with what the bundle's manifest says under ``"locate"`` (a threshold calibrated for it)."""
        spec = bundle.manifest.get(MANIFEST_KEY) or {}
        known = {k: spec[k] for k in ("threshold", "temperature") if k in spec}
        return cls(**known)


def object_query(bundle: "ModelBundle", text: str) -> np.ndarray:
    """(D,) normalised embedding of a query for the object tier (its training prompts' mean)."""
    from ..expansion import prompt_ensemble

    return bundle.text_memo(("locate-query", text), lambda: prompt_ensemble(bundle, [text], OBJECT_PROMPTS)[0])


def background_embeddings(bundle: "ModelBundle") -> np.ndarray:
    """(B, D) normalised embeddings of the background texts (computed once per bundle)."""
    from ..expansion import prompt_ensemble

    return bundle.text_memo(("locate-background",), lambda: prompt_ensemble(bundle, list(BACKGROUND_TEXTS),
                                                                          BACKGROUND_PROMPTS))


def relevance(tokens: np.ndarray, query: np.ndarray, background: np.ndarray, logit_scale: float) -> np.ndarray:
    """Calibrated relevance of tokens for a query: softmax of the query against background texts.

    Args:
        tokens: (..., D) normalised object tokens.
        query: (D,) normalised query embedding.
        background: (B, D) normalised background embeddings.
        logit_scale: The softmax temperature (the model's, times ``LocateConfig.temperature``).

    Returns:
        (...) probabilities in [0, 1]: the query's share (with the background texts of its family).
    """
    family = background @ query >= FAMILY_COSINE
    logits = logit_scale * np.concatenate([(tokens @ query)[..., None], tokens @ background.T], axis=-1)
    logits -= logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    mine = probs[..., 0] + probs[..., 1:][..., family].sum(-1)
    return (mine / probs.sum(-1)).astype(np.float32)


def relevance_maps(objects: np.ndarray, bundle: "ModelBundle", text: str,
                   config: LocateConfig | None = None) -> np.ndarray:
    """Relevance maps of tiles' object tokens for a query.

    Args:
        objects: (N, G*G, D) object tokens (``encode_tiers(...)["objects"]``), rows of the grid
            from the north-west.
        text: The query (or a question's subject).

    Returns:
        (N, G, G) calibrated relevance, row 0 to the north.
    """
    config = config or LocateConfig.for_bundle(bundle)
    n, cells, _ = objects.shape
    grid = int(round(cells ** 0.5))
    if grid * grid != cells:
        raise ValueError(f"object tokens must form a square grid, got {cells} cells")
    if n == 0:
        return np.zeros((0, grid, grid), np.float32)
    probs = relevance(objects, object_query(bundle, text), background_embeddings(bundle),
                      bundle.logit_scale * config.temperature)
    return probs.reshape(n, grid, grid)
