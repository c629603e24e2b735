"""Classify: the fine tiles of an extent, each with its best class of a list (prompt ensembles)."""

from __future__ import annotations

import numpy as np

from ..bundle import ModelBundle
from ..encoding.encode import encode_extent
from ..errors import RsVlmError
from ..expansion import expand_queries, prompt_ensemble
from ..geometry import Extent
from ..progress import NullProgress, ProgressBackend
from ..raster import RasterSource
from ..records import ClassRecord
from ..seen_bias import query_familiarity, seen_bias_offsets, warn_unfamiliar
from ..summaries import whole_view_classes
from ..validation import text_warnings
from .config import JobConfig
from .results import ClassifyResult


CLASSIFY_TIERS = ("embedding",)

CLASS_PROMPTS = ("an aerial image of {}.", "a satellite photo of {}.", "there is {} in the image.",
                 "a remote sensing image of {}.")


def scene_class_list(bundle: ModelBundle) -> list[str]:
    """The knowledge base's scene concepts, the default class list."""
    kb = bundle.knowledge_base
    return [kb.concepts[i].name for i in kb.level_indices("scene")]


def class_embeddings(bundle: ModelBundle, classes: list[str], prompts: tuple[str, ...] = CLASS_PROMPTS) -> np.ndarray:
    """(C, D) normalised prompt-ensemble embeddings of class names (the names alone, no knowledge)."""
    return prompt_ensemble(bundle, classes, prompts)


def check_classes(classes: list[str] | None, bundle: ModelBundle) -> list[str]:
    """A clean class list: stripped, de-duplicated; the knowledge base's scenes when empty."""
    seen, out = set(), []
    for c in classes or []:
        name = c.strip()
        if name and name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    if classes and len(out) < 2:
        raise RsVlmError("Give at least two classes to choose from, for example \"forest, farmland, water\".")
    return out or scene_class_list(bundle)


def split_classes(text: str | None) -> list[str] | None:
    """The names of a comma-separated class list; None when it is empty (the knowledge base's scenes).

    Raises:
        RsVlmError: The text holds only commas and blanks.
    """
    if not (text or "").strip():
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise RsVlmError(f"The class list {text!r} names no classes; give at least two names separated by commas, "
                         "for example \"forest, farmland, water\", or leave it empty for the knowledge base's "
                         "scene concepts.")
    return names


def classify(source: RasterSource, bundle: ModelBundle, classes: list[str] | None = None, extent: Extent | None = None,
             config: JobConfig | None = None, progress: ProgressBackend | None = None) -> ClassifyResult:
    """Classify the fine tiles of an extent (DRIS leaves) into a class list with prompt ensembles.

    With ``config.knowledge`` each class is scored together with its knowledge-base parts
    (synonyms, description and sub-concepts of the concept it names, see :mod:`expansion`);
    with ``config.seen_bias`` and a model calibrated for it, scores are corrected for the model's
    bias towards its training classes (:mod:`seen_bias`).

    Args:
        classes: The user's class names; None or empty uses the knowledge base's scene concepts.
    """
    config = config or JobConfig()
    progress = progress or NullProgress()
    user_list = bool(classes)
    classes = check_classes(classes, bundle)
    for name in classes:
        for warning in text_warnings(bundle, name, f"The class name \"{name[:40]}\""):
            progress.warn(warning)
    # the user's names are checked; the default list (the knowledge base's scenes) is what RS-VLM offers
    familiarity = (warn_unfamiliar(bundle, classes, CLASS_PROMPTS, progress) if user_list
                   else query_familiarity(bundle, classes, CLASS_PROMPTS))
    familiar = {f.text: f.score for f in familiarity}
    queries = expand_queries(bundle, classes, CLASS_PROMPTS, knowledge=config.knowledge)
    expanded = sum(bool(queries.expansions(k)) for k in range(len(classes)))
    if expanded:
        progress.info(f"{expanded} of {len(classes)} classes are also scored by their names, descriptions "
                      "and sub-concepts in the knowledge base.")
    encoding = encode_extent(source, bundle, extent, config, progress, keep=CLASSIFY_TIERS)
    progress.set_stage("Classifying tiles")
    # The margin is calibrated for class lists like the user's (a few classes, most of them trained);
    # the default list, the knowledge base's scene concepts, is mostly untrained names and is scored plain.
    offsets = seen_bias_offsets(bundle, classes, CLASS_PROMPTS, config.seen_bias and user_list)
    if np.ptp(offsets) > 1e-6:  # some classes less familiar than others: the correction changes the ranking
        lifted = [classes[k] for k in np.argsort(-offsets)[:3] if offsets[k] > offsets.min() + 1e-6]
        progress.info(f"Scores are corrected for the model's bias towards the classes it was trained on "
                      f"(calibrated stacking); the least familiar here: {', '.join(lifted)}.")
    logits = bundle.logit_scale * (queries.scores(encoding.embeddings) + offsets)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1)
    records, scene = [], []
    for i, tile in enumerate(encoding.tiles):
        best, second = order[i, 0], order[i, 1] if len(classes) > 1 else order[i, 0]
        if "global" in tile.levels:
            scene = [(classes[j], float(probs[i, j])) for j in order[i, :3]]
        if "object" in tile.levels:  # the leaves tile the extent exactly once
            records.append(ClassRecord(classes[best], float(probs[i, best]), classes[second], "object", tile.depth,
                                       tile.extent, tile.gsd_m, source.name, familiar[classes[best]]))
    scene, note = whole_view_classes(classes, records, scene)  # the class of the tiles, not of one image
    if note:
        progress.info(note)
    progress.set_fraction(1.0)
    return ClassifyResult(classes, records, scene, encoding.plan, source.georef.crs_wkt, list(source.warnings),
                          encoding.timings)
