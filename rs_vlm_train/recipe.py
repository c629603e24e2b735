"""The training recipes and the constants every stage shares: where the knowledge base and the
default weights live, the knowledge levels, tier and routing weights, the recipes (issue 3's
``v2`` to ``v5``) and the ablation switches."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "rs_vlm_plugin"
DEFAULT_OUT = PACKAGE_ROOT / "resources" / "weights" / "rs_vlm_lite0.npz"
KNOWLEDGE_BASE = PACKAGE_ROOT / "resources" / "knowledge_base.json"
LEVELS = {"object": 0, "region": 1, "scene": 2}
TIER_WEIGHTS = {"global": 1.0, "region": 0.5, "object": 0.5}
ROUTING_WEIGHT = 0.1
ABLATIONS = {  # in the order they run: the questions of issue 10 first
    "full": {},
    "no experts": {"experts": False},
    "no augmentation": {"augment": False},
    "no geometry preservation": {"recipe": {"geometry": 0.0, "decay_to_init": 0.0}},
    "no coarser-GSD views": {"recipe": {"gsd_share": 0.0}},
    "no new image signals": {"recipe": {"extra": False, "box_captions": False}},
    "no weak pairs or text share": {"recipe": {"weak_captions": False, "text_share": 0.0}},
    "no object tier": {"tier": "object"},
    "no region tier": {"tier": "region"},
    "no global tier": {"tier": "global"},
}


@dataclass
class Recipe:
    """What the alignment and the decoder are trained on (issue 3's recipe is ``RECIPES["v2"]``).

    Attributes:
        leave_out: Train without the leave-classes-out choice (:mod:`classes`).
        extra: RESISC45's airplane and airport images with class prompts.
        box_captions: VHR-10 whole images with box-to-caption scene and region sentences.
        gsd_share: Share of UCM and RESISC samples drawn from their coarser-GSD views.
        geometry: Weight of the geometry loss: the global tokens' batch similarity structure
            kept close to that of the frozen ImageNet features (relational distillation).
        decay_to_init: Decoupled decay of the backbone's fine-tuned head towards its ImageNet
            weights (instead of towards zero).
        weak_captions: Decoder fine-tuning also on RESISC (and extra) images paired with corpus
            sentences of their class and on VHR-10 images with their box sentences.
        text_share: Share of each decoder fine-tuning step given to text-only reconstruction of
            the caption corpora.
        box_sentences_in_decoder: Decoder fine-tuning also on VHR-10 images with their
            box-to-caption sentences (off: those fixed phrases, "a running track around a
            football field", took over the caption of a forest with a road).
        aid: AID images with their RSICD sentences (a share ``aid_sentence_share`` of them; the
            rest with class prompts) in the global tier, AID mosaics in the region tier, and AID
            pairs (``aid_decoder_per_epoch`` images an epoch) in decoder fine-tuning.
        open_blocks: MBConv blocks at the end of the trunk trained with the head (over the cached
            features entering them; 0: only the head convolution), decayed towards ImageNet
            with the head (``decay_to_init``) and under the geometry loss's teacher.
        anchor: Weight of the fine-GSD anchor: on zoomed-in UCM views (``ucm_zoom``, 10-15 cm),
            the global and region tokens are kept near those of a teacher model (cosine
            distance), so that what the AID scenes (0.5-8 m) move does not move the native tiles
            of fine orthophotos (0: no anchor). Off in leave-classes-out runs: the teacher saw
            every class.
        anchor_weights: The teacher's weight file (an ``rs_vlm_lite0.npz`` with opened blocks or
            without); required when ``anchor`` is on.
        locate_steps: Steps of the locate stage after the alignment (:func:`locate_stage`): the
            object head alone learns background cells of VHR-10 crops against the background
            texts the outlines are scored against, and the cells under boxes against their
            class (0: no such stage).
    """

    leave_out: bool = False
    extra: bool = True
    box_captions: bool = True
    gsd_share: float = 0.25
    geometry: float = 1.0
    decay_to_init: float = 1.0
    weak_captions: bool = True
    text_share: float = 0.2
    box_sentences_in_decoder: bool = False
    locate_steps: int = 0
    aid: bool = False
    aid_sentence_share: float = 0.75
    aid_decoder_per_epoch: int = 2500
    open_blocks: int = 0
    anchor: float = 0.0
    anchor_weights: str = ""

    def to_dict(self) -> dict:  # noqa: D102
        return asdict(self)


RECIPES = {
    "v2": Recipe(extra=False, box_captions=False, gsd_share=0.0, geometry=0.0, decay_to_init=0.0,
                 weak_captions=False, text_share=0.0),
    "open": Recipe(),
    "open-locate": Recipe(locate_steps=300),
    "v4": Recipe(aid=True, open_blocks=2),
    "v4-frozen": Recipe(aid=True),
    "v5": Recipe(aid=True, open_blocks=2, anchor=2.0),
}
