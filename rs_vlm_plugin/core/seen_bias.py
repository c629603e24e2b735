"""Calibrated stacking: a class list's scores corrected for the model's bias towards its training classes.

A contrastively trained image tower scores the classes it was trained on higher than classes it
has never seen, even on images of the unseen ones (on the leave-classes-out split, version 2 put
95 % of the unseen-class images into seen classes).  Calibrated stacking (Chao et al., ECCV 2016)
subtracts a margin ``gamma`` from the scores of seen classes.  Here "seen" is graded: a class's
*familiarity* is the largest cosine similarity between its prompt-ensemble embedding and those of
the classes the model was trained on (1 for a training class itself, about 0.55-0.75 for the
left-out ones), and its score becomes

    s'_c = s_c - gamma * familiarity_c

so a class list made only of training classes ranks exactly as before, and a new class ("railway
station") stops losing by default against its nearest training class ("industrial area").
``gamma`` is calibrated at training time on the leave-classes-out split (``rs_vlm_train``) and
stored in the bundle manifest with the trained class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import RsVlmError
from .expansion import prompt_ensemble

if TYPE_CHECKING:
    from .bundle import ModelBundle
    from .progress import ProgressBackend

MANIFEST_KEY = "seen_bias"


@dataclass(frozen=True)
class SeenBias:
    """The manifest's ``"seen_bias"``: the margin and the classes it is measured against.

    Attributes:
        gamma: Margin (cosine units) taken off a fully familiar class; 0 disables the correction.
        trained_classes: Readable names of the classes the model was trained on.
    """

    gamma: float = 0.0
    trained_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (0.0 <= self.gamma <= 1.0):
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")

    @property
    def active(self) -> bool:  # noqa: D102
        return self.gamma > 0 and bool(self.trained_classes)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "SeenBias":
        """The manifest's settings; none (no correction) where it has none.

        Raises:
            RsVlmError: The entry is not a margin in [0, 1] with a list of class names.
        """
        spec = manifest.get(MANIFEST_KEY) or {}
        try:
            names = spec.get("trained_classes", [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise TypeError("trained_classes must be a list of names")
            return cls(float(spec.get("gamma", 0.0)), tuple(names))
        except (AttributeError, TypeError, ValueError) as exc:
            raise RsVlmError(f"The model manifest's \"{MANIFEST_KEY}\" is not valid ({exc}); give a gamma in [0, 1] "
                             "and the trained class names, or export the model again.") from exc


def familiarity(class_embeddings: np.ndarray, trained_embeddings: np.ndarray) -> np.ndarray:
    """(C,) largest cosine similarity of each (normalised) class embedding to the trained ones, in [0, 1]."""
    if not len(trained_embeddings):
        return np.zeros(len(class_embeddings), np.float32)
    return np.clip((class_embeddings @ trained_embeddings.T).max(axis=1), 0.0, 1.0).astype(np.float32)


def stacking_offsets(familiar: np.ndarray, gamma: float) -> np.ndarray:
    """(C,) what calibrated stacking adds to each class's score: ``-gamma * familiarity``."""
    return (-gamma * familiar).astype(np.float32)


def seen_bias_offsets(bundle: "ModelBundle", classes: Sequence[str], prompts: Sequence[str],
                      enabled: bool = True) -> np.ndarray:
    """(C,) score offsets of a class list under the bundle's calibrated stacking (zeros when it has none).

    Args:
        bundle: The model; its manifest's ``"seen_bias"`` gives gamma and the trained classes.
        classes: The class names being scored.
        prompts: The prompt templates the class names are scored through (the trained classes
            go through the same ones).
        enabled: False returns zeros (the job asked for the raw scores).
    """
    settings = SeenBias.from_manifest(bundle.manifest)
    if not (enabled and settings.active):
        return np.zeros(len(classes), np.float32)
    def make() -> np.ndarray:
        trained = prompt_ensemble(bundle, list(settings.trained_classes), prompts)
        return stacking_offsets(familiarity(prompt_ensemble(bundle, list(classes), prompts), trained), settings.gamma)

    return bundle.text_memo(("seen_bias", tuple(classes), tuple(prompts), settings.gamma), make)


# --------------------------------------------------------------------------- what users are told

FAMILIAR_THRESHOLD = 0.7  # below it a text is "outside what the model learnt" (left-out classes: 0.55-0.75)
MAX_FAMILIARITY_WARNINGS = 5  # sentences naming one text each; the rest are counted in one more


@dataclass(frozen=True)
class Familiarity:
    """How close a user's text (class name, search text or question subject) is to what the model learnt.

    Attributes:
        text: The text as the user typed it.
        score: Its familiarity in [0, 1] (1: a trained class itself).
        nearest: The trained class names closest to it, most similar first.
    """

    text: str
    score: float
    nearest: tuple[str, ...]

    @property
    def familiar(self) -> bool:  # noqa: D102
        return self.score >= FAMILIAR_THRESHOLD

    @property
    def message(self) -> str:
        """One sentence for the user ("" when the text is familiar)."""
        if self.familiar:
            return ""
        return (f"RS-VLM has seen little like '{self.text}' (familiarity {self.score:.2f}); nearest learnt concepts: "
                f"{', '.join(self.nearest)}. Treat its results as a guess.")


def query_familiarity(bundle: "ModelBundle", texts: Sequence[str], prompts: Sequence[str],
                      n_nearest: int = 3) -> list[Familiarity]:
    """Familiarity of each text to the bundle's trained classes, through the same prompts.

    A bundle whose manifest names no trained classes (an imported CLIP model) reports every text
    as familiar with no nearest concepts: there is nothing to compare with.
    """
    trained = list(SeenBias.from_manifest(bundle.manifest).trained_classes)
    if not trained or not texts:
        return [Familiarity(t, 1.0, ()) for t in texts]

    def make() -> list[Familiarity]:
        t_emb = prompt_ensemble(bundle, trained, prompts)
        q_emb = prompt_ensemble(bundle, list(texts), prompts)
        nearest = np.argsort(-(q_emb @ t_emb.T), axis=1)[:, :n_nearest]
        return [Familiarity(text, float(score), tuple(trained[k] for k in order))
                for text, score, order in zip(texts, familiarity(q_emb, t_emb), nearest)]

    return bundle.text_memo(("familiarity", tuple(texts), tuple(prompts)), make)


def warn_unfamiliar(bundle: "ModelBundle", texts: Sequence[str], prompts: Sequence[str],
                    progress: "ProgressBackend") -> list[Familiarity]:
    """:func:`query_familiarity` of each text, with a warning on ``progress`` for each unfamiliar one.

    The warning reaches the user as the job's other warnings do (stderr and ``--json`` on the command
    line, the panel, Processing's log).
    """
    found = query_familiarity(bundle, texts, prompts)
    unfamiliar = [f for f in found if not f.familiar]
    for f in unfamiliar[:MAX_FAMILIARITY_WARNINGS]:
        progress.warn(f.message)
    rest = unfamiliar[MAX_FAMILIARITY_WARNINGS:]
    if rest:  # a long class list gets a few sentences and a count, not one line per name
        names = ", ".join(f"'{f.text}'" for f in rest[:3])
        progress.warn(f"RS-VLM has seen little like {len(rest)} more of the texts given ({names}, ...); "
                      "their results are guesses too (the 'familiar' field of the output says which).")
    return found
