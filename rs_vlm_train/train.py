"""Train the RS-VLM model on folders laid out like ``../shared/data``.

Stages, each checkpointed under ``--cache`` so an interrupted run resumes where it stopped:

1. ``features``: frozen trunk outputs of every training view and frozen MiniLM embeddings of
   every text (see ``features.py``), including coarser-GSD views, RESISC45's airplane and
   airport classes, whole VHR-10 images and mosaics without the left-out classes.
2. ``align``: MS-VLAM, three contrastive losses weighted and summed: global (UCM image with
   its captions, RESISC images with class prompts, VHR-10 images with box-to-caption sentences,
   mosaics with a composed caption), region (each window of a mosaic with its own source's
   text, VHR-10 windows with the sentence of the boxes in them) and object (VHR-10 box tokens
   with the object's phrase); the open recipe adds a geometry loss that keeps the global
   tokens' batch similarities close to those of the frozen ImageNet features, and decays the
   fine-tuned backbone head towards its ImageNet weights.
3. ``decoder-pretrain``: the caption decoder, text only, decoding RSICD / RSITMD / Sydney /
   UCM-train captions from their own noised MiniLM embeddings.
4. ``decoder``: the decoder fine-tuned on UCM train images, RESISC images paired with corpus
   sentences of their class and VHR-10 images with their box sentences, with a share of each
   step kept for text-only reconstruction of the corpora.
5. ``--leave-out``: issue 3's recipe (``v2``) and the chosen one trained without a seeded choice
   of classes (``classes.py``) and evaluated on seen / unseen classes (generalised zero-shot)
   and caption truthfulness.
6. ``--ablations``: switches off one part at a time, on the leave-classes-out split.

    python3 build.py train --data ../shared/data [--leave-out] [--ablations]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rs_vlm_plugin.core.expansion import ExpandedQueries, QueryKnowledge, expand_text
from rs_vlm_plugin.core.knowledge import KnowledgeBase
from rs_vlm_plugin.core.locate.relevance import BACKGROUND_PROMPTS, BACKGROUND_TEXTS
from rs_vlm_plugin.core.qa import calibrate_threshold, presence_scores, subject_prompts
from rs_vlm_plugin.core.seen_bias import familiarity, stacking_offsets
from rs_vlm_plugin.modeling.rsvlm import (CaptionDecoder, ImageModel, ModelConfig, box_cell_weights,
                                          build_backbone, pool_objects)

from . import features as feat
from .box_captions import box_sentence, region_windows, window_labels
from .classes import generalised_zero_shot, group, truthful_hits, truthfulness, weak_captions
from .data import VHR10_CLASSES
from .decoder import (PairedSource, build_vocab, finetune_decoder, generate, pretrain_decoder, read_corpus,
                      read_corpus_by_class)
from .seeding import seed_everything
from .metrics import caption_scores, object_retrieval, retrieval_recalls, scene_accuracy

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

    def to_dict(self) -> dict:  # noqa: D102
        return asdict(self)


RECIPES = {
    "v2": Recipe(extra=False, box_captions=False, gsd_share=0.0, geometry=0.0, decay_to_init=0.0,
                 weak_captions=False, text_share=0.0),
    "open": Recipe(),
    "open-locate": Recipe(locate_steps=300),
    "v4": Recipe(aid=True, open_blocks=2),
    "v4-frozen": Recipe(aid=True),
}


def multi_positive_loss(a: torch.Tensor, b: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE in which every pair with the same key is a positive."""
    logits = scale * a @ b.t()
    target = (keys[:, None] == keys[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.t().log_softmax(1), 1).mean())


def geometry_loss(tokens: torch.Tensor, reference: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Relational distillation: KL between each row's softmax over batch similarities of the
    reference features (centred, frozen ImageNet) and of the tokens (diagonal left out)."""
    ref = F.normalize(reference - reference.mean(0, keepdim=True), dim=-1)
    eye = torch.eye(len(tokens), dtype=torch.bool)
    target = (ref @ ref.t() / temperature).masked_fill(eye, -1e9).softmax(-1)
    logp = (tokens @ tokens.t() / temperature).masked_fill(eye, -1e9).log_softmax(-1)
    return F.kl_div(logp, target, reduction="batchmean")


# --------------------------------------------------------------------------- texts


class Texts:
    """Every text of the alignment stage, embedded once by the frozen MiniLM."""

    def __init__(self, sets: dict, kb: dict, cache: Path) -> None:
        self.items: list[str] = []
        self.index: dict[str, int] = {}
        idx = sets["ucm_train"].index
        self.ucm_train = [[self.add(s) for s in sents] for sents in idx["sentences"]]
        self.ucm_val = [[self.add(s) for s in sents] for sents in sets["ucm_val"].index["sentences"]]
        self.resisc_classes = sorted(set(sets["resisc"].index["classes"]))
        self.extra_classes = sorted(set(sets["extra"].index["classes"])) if "extra" in sets else []
        self.scene_classes = sorted(set(self.resisc_classes) | set(self.extra_classes))
        self.scene_prompts = {c: [self.add(p.format(feat.readable(c))) for p in feat.SCENE_PROMPTS]
                              for c in self.scene_classes}
        # AID: each image's distinct RSICD sentences and its class prompts.
        aid = sets["aid"].index if "aid" in sets else {"classes": [], "sentences": []}
        self.aid = [[self.add(s) for s in sents] for sents in aid["sentences"]]
        self.aid_classes = sorted(set(aid["classes"]))
        self.aid_label = list(aid["classes"])
        self.aid_prompts = {c: [self.add(p.format(feat.readable(c))) for p in feat.SCENE_PROMPTS]
                            for c in self.aid_classes}
        # One positive per readable class name across datasets (RESISC and AID "forest" alike).
        self.prompt_names = sorted({feat.readable(c) for c in self.scene_classes + self.aid_classes})
        self.ucm_classes = sorted(set(idx["classes"]))
        self.ucm_prompts = {c: [self.add(p.format(feat.readable(c))) for p in feat.SCENE_PROMPTS] for c in self.ucm_classes}
        self.presence_prompts = {c: [self.add(p) for p in subject_prompts(feat.readable(c))] for c in self.ucm_classes}
        self.object_classes = list(VHR10_CLASSES)
        self.object_prompts = {c: [self.add(p.format(c)) for p in feat.OBJECT_PROMPTS] for c in self.object_classes}
        self.mosaic = {tag: [self.add(self.mosaic_caption(m)) for m in sets[tag].index["mosaics"]]
                       for tag in ("mosaic", "mosaic_lco", "mosaic_aid", "mosaic_aid_lco") if tag in sets}
        # Box-to-caption sentences of whole VHR-10 images and of their region windows (None: no box).
        self.vhr_scene, self.vhr_regions = [], []
        windows = region_windows()
        for im in sets["vhr_scene"].index["images"] if "vhr_scene" in sets else []:
            labels = [label for label, _ in im["objects"]]
            sentence = box_sentence(labels)
            self.vhr_scene.append(self.add(sentence) if sentence else None)
            self.vhr_regions.append([self.add(s) if (s := box_sentence(w)) else None
                                     for w in window_labels([(lab, tuple(b)) for lab, b in im["objects"]], windows)])
        # Query-time knowledge: each class name's parts (the name, its knowledge-base synonyms,
        # description, children; core/expansion.py), each through the class prompt ensemble.
        concepts = KnowledgeBase.read_concepts(KNOWLEDGE_BASE)
        self.class_parts = {c: [[self.add(t.format(part)) for t in feat.SCENE_PROMPTS]
                                for part in expand_text(concepts, feat.readable(c))]
                            for c in sorted(set(self.ucm_classes) | set(self.resisc_classes) | set(self.aid_classes))}
        from rs_vlm_plugin.modeling.export import concept_texts

        self.kb_rows = []
        for concept in kb["concepts"]:
            self.kb_rows.append([self.add(t) for t in concept_texts(concept)])
        # What a cell shows when it shows no object: the texts the outlines score against (core/locate).
        self.background_rows = [[self.add(p.format(b)) for p in BACKGROUND_PROMPTS] for b in BACKGROUND_TEXTS]
        self.emb = torch.from_numpy(feat.text_embeddings(self.items, cache, "align"))

    @staticmethod
    def mosaic_caption(spec: dict) -> str:
        """The composed caption of a mosaic ("an aerial image of farmland, a river and a forest.")."""
        names = [feat.readable(lab) for _, _, lab in spec["sources"]]
        return "an aerial image of " + ", ".join(names[:-1]) + " and " + names[-1] + "."

    def prompt_key(self, label: str) -> int:
        """The multi-positive key of a class's prompts (negative: never a text row)."""
        return -1 - self.prompt_names.index(feat.readable(label))

    def prompts_of(self, label: str) -> list[int]:
        """Text rows of a class's prompt ensemble (RESISC, extra or AID class)."""
        return self.scene_prompts[label] if label in self.scene_prompts else self.aid_prompts[label]

    def aid_text(self, rng: np.random.Generator, image: int, share: float) -> tuple[int, int]:
        """(text row, key) for an AID image: one of its sentences with probability ``share``, else a
        class prompt (keyed by class, so all prompts of a class are one positive)."""
        if rng.random() < share:
            t = int(rng.choice(self.aid[image]))
            return t, t
        label = self.aid_label[image]
        return int(rng.choice(self.aid_prompts[label])), self.prompt_key(label)

    def add(self, text: str) -> int:  # noqa: D102
        if text not in self.index:
            self.index[text] = len(self.items)
            self.items.append(text)
        return self.index[text]

    def mean(self, rows: list[int]) -> torch.Tensor:
        """Normalised mean embedding of a prompt ensemble."""
        return F.normalize(self.emb[rows].mean(0), dim=-1)

    def kb_embeddings(self) -> torch.Tensor:  # noqa: D102
        return torch.stack([self.mean(rows) for rows in self.kb_rows])

    def expanded(self, classes: list[str], knowledge: QueryKnowledge) -> ExpandedQueries:
        """The classes' expanded queries (query-time knowledge) with the given combination settings."""
        parts, owners, emb = [], [], []
        for k, c in enumerate(classes):
            for rows in self.class_parts[c]:
                parts.append(self.items[rows[0]])
                owners.append(k)
                emb.append(self.mean(rows))
        return ExpandedQueries.from_embeddings(parts, owners, torch.stack(emb).numpy(), knowledge.beta,
                                               knowledge.base_weight)


# --------------------------------------------------------------------------- alignment


def build_image_model(config: ModelConfig, texts: Texts, kb: dict):
    """Trunk (frozen) and image model with the knowledge base embedded by the frozen text tower."""
    trunk, net = build_backbone(config)
    levels = torch.tensor([LEVELS[c["level"]] for c in kb["concepts"]])
    return trunk, ImageModel(config, net, texts.kb_embeddings(), levels)


def _trainable(model: ImageModel):
    return [p for p in model.parameters() if p.requires_grad]


def _set_train(model: ImageModel) -> None:
    model.train()
    model.top.eval()  # batch norm statistics stay those of ImageNet


def semantic_routing_loss(seen: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Cross-entropy of the router's weights against the level shares (object, region, scene) of
    the concepts each token retrieved: expert k learns to take the tokens of knowledge level k."""
    losses = [-(levels.detach() * gates.clamp_min(1e-6).log()).sum(-1).mean() for gates, levels in seen]
    return sum(losses) / max(1, len(losses))


class TrainingRows:
    """The rows of each feature set that a recipe trains on (leave-classes-out applied)."""

    def __init__(self, sets: dict, texts: Texts, recipe: Recipe) -> None:
        self.unseen = set(feat.leave_out(sets)["groups"]) if recipe.leave_out and "mosaic_lco" in sets else set()
        seen = lambda source, label: group(source, label) not in self.unseen  # noqa: E731
        self.ucm = np.asarray([i for i, c in enumerate(sets["ucm_train"].index["classes"]) if seen("ucm", c)])
        resisc = sets["resisc"].index
        self.resisc = np.asarray([i for i, (h, c) in enumerate(zip(resisc["held_out"], resisc["classes"]))
                                  if not h and seen("resisc", c)])
        self.extra = np.zeros(0, int)
        if recipe.extra and "extra" in sets:
            ex = sets["extra"].index
            self.extra = np.asarray([i for i, (h, c) in enumerate(zip(ex["held_out"], ex["classes"]))
                                     if not h and seen("extra", c)], int)
        self.mosaic_tag = "mosaic_lco" if recipe.leave_out else "mosaic"
        self.vhr_scene = np.zeros(0, int)
        if recipe.box_captions and "vhr_scene" in sets:
            images = sets["vhr_scene"].index["images"]
            self.vhr_scene = np.asarray([i for i, im in enumerate(images) if not im["held_out"]
                                         and texts.vhr_scene[i] is not None
                                         and all(seen("vhr", lab) for lab, _ in im["objects"])], int)
        crops = sets["vhr_train"].index["crops"]
        self.crops = np.asarray([i for i, c in enumerate(crops) if c["objects"]
                                 and all(seen("vhr", lab) for lab, _ in c["objects"])])
        self.gsd = recipe.gsd_share > 0 and "ucm_gsd" in sets and "resisc_gsd" in sets
        self.aid = np.zeros(0, int)
        self.aid_mosaic_tag = None
        if recipe.aid and "aid" in sets:
            ai = sets["aid"].index
            self.aid = np.asarray([i for i, (h, c) in enumerate(zip(ai["held_out"], ai["classes"]))
                                   if not h and seen("aid", c)], int)
            self.aid_mosaic_tag = "mosaic_aid_lco" if recipe.leave_out else "mosaic_aid"


def _sample_scene_rows(rng, sets, fs_native: str, fs_coarse: str, rows: np.ndarray, n: int, native_views: int,
                       gsd_share: float, use_gsd: bool):
    """(row indices, fine, mid) of ``n`` images, a share of them from their coarser-GSD views."""
    picks = rng.choice(rows, n, replace=False)
    n_coarse = int(round(n * gsd_share)) if use_gsd else 0
    fa, ma = sets[fs_native].take(picks[n_coarse:], rng.integers(0, native_views, n - n_coarse))
    if not n_coarse:
        return picks, fa, ma
    coarse = sets[fs_coarse]
    fb, mb = coarse.take(picks[:n_coarse], rng.integers(0, coarse.fine.shape[1], n_coarse))
    return picks, torch.cat([fb, fa]), torch.cat([mb, ma])


def sample_boxes(rng: np.random.Generator, objects: list, n: int, crop: int, grid: int, texts: Texts,
                 into: tuple[list, list, list, list]) -> None:
    """Up to ``n`` boxes of one crop for the phrase loss, appended to ``into``: (cell weights, the
    crop's row, a prompt of the box's class, the class index)."""
    weights, rows, tids, keys = into
    for idx in rng.permutation(len(objects))[:n]:
        label, box = objects[idx]
        weights.append(box_cell_weights(tuple(box), grid))
        rows.append(crop)
        tids.append(int(rng.choice(texts.object_prompts[label])))
        keys.append(texts.object_classes.index(label))


def align(sets: dict, texts: Texts, kb: dict, config: ModelConfig, cache: Path, tag: str, steps: int, seed: int,
          drop_tier: str | None = None, log_every: int = 100, recipe: Recipe | None = None) -> ImageModel:
    """MS-VLAM alignment; resumes from ``cache/align_{tag}.ckpt``."""
    recipe = recipe or RECIPES["v2"]
    rng = seed_everything(seed)
    _, model = build_image_model(config, texts, kb)
    params = _trainable(model)
    top_ids = {id(p) for p in model.top.parameters()}
    top_params = [p for p in params if id(p) in top_ids]
    top_init = [p.detach().clone() for p in top_params]
    teacher = copy.deepcopy(model.top).eval() if recipe.geometry > 0 else None
    if teacher is not None:
        for p in teacher.parameters():
            p.requires_grad_(False)
    top_decay = 0.0 if recipe.decay_to_init > 0 else 0.05
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) not in top_ids], "lr": 5e-4, "weight_decay": 0.05},
                             {"params": top_params, "lr": 1e-4, "weight_decay": top_decay}])
    base_lrs = [g["lr"] for g in opt.param_groups]
    ckpt_path = cache / f"align_{tag}.ckpt"
    final_path = cache / f"align_{tag}.pt"
    if final_path.exists():
        model.load_state_dict(torch.load(final_path, weights_only=True), strict=False)
        return model.eval()
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        print(f"[{tag}] resuming at step {step}", flush=True)

    rows = TrainingRows(sets, texts, recipe)
    resisc, vhr = sets["resisc"], sets["vhr_train"]
    resisc_classes = resisc.index["classes"]
    extra_classes = sets["extra"].index["classes"] if len(rows.extra) else []
    crops = vhr.index["crops"]
    mosaic_set = sets[rows.mosaic_tag]
    mosaics = mosaic_set.index["mosaics"]
    mosaic_texts = texts.mosaic[rows.mosaic_tag]
    aid_mosaic_set = sets[rows.aid_mosaic_tag] if rows.aid_mosaic_tag else None
    aid_mosaics = aid_mosaic_set.index["mosaics"] if aid_mosaic_set is not None else []
    aid_mosaic_texts = texts.mosaic[rows.aid_mosaic_tag] if aid_mosaic_set is not None else []
    weights = {k: (0.0 if k == drop_tier else v) for k, v in TIER_WEIGHTS.items()}
    # Batch: 64 UCM + 32 RESISC + 16 extra + 48 AID + 16 VHR scenes + 16 mosaics + 8 AID mosaics + 24 VHR crops
    # (fewer when a set is smaller; no AID without it in the recipe).
    n_ucm, n_res = min(64, len(rows.ucm)), min(32, len(rows.resisc))
    n_ext, n_vsc = min(16, len(rows.extra)), min(16, len(rows.vhr_scene))
    n_mos, n_obj = min(16, len(mosaics)), min(24, len(rows.crops))
    n_aid, n_amos = min(48, len(rows.aid)), min(8, len(aid_mosaics))
    start = time.time()
    running: dict[str, float] = {}
    since = 0
    while step < steps:
        _set_train(model)
        lr_scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * lr_scale
        # ---- sample a batch: [ucm, resisc, extra, vhr scenes, mosaics | vhr crops]
        u, fu, mu = _sample_scene_rows(rng, sets, "ucm_train", "ucm_gsd", rows.ucm, n_ucm, 8, recipe.gsd_share, rows.gsd)
        r, fr, mr = _sample_scene_rows(rng, sets, "resisc", "resisc_gsd", rows.resisc, n_res, 2, recipe.gsd_share,
                                       rows.gsd)
        parts_f, parts_m = [fu, fr], [mu, mr]
        e = rng.choice(rows.extra, n_ext, replace=False) if n_ext else np.zeros(0, int)
        if n_ext:
            fe, me = sets["extra"].take(e, rng.integers(0, 2, n_ext))
            parts_f.append(fe)
            parts_m.append(me)
        a = rng.choice(rows.aid, n_aid, replace=False) if n_aid else np.zeros(0, int)
        if n_aid:
            fa, ma = sets["aid"].take(a, rng.integers(0, sets["aid"].fine.shape[1], n_aid))
            parts_f.append(fa)
            parts_m.append(ma)
        vs = rng.choice(rows.vhr_scene, n_vsc, replace=False) if n_vsc else np.zeros(0, int)
        if n_vsc:
            fv, mv = sets["vhr_scene"].take(vs, np.zeros(n_vsc, int))
            parts_f.append(fv)
            parts_m.append(mv)
        m = rng.choice(len(mosaics), n_mos, replace=False)
        o = rng.choice(rows.crops, n_obj, replace=False)
        fm, mm = mosaic_set.take(m, np.zeros(n_mos, int))
        am = rng.choice(len(aid_mosaics), n_amos, replace=False) if n_amos else np.zeros(0, int)
        if n_amos:
            fam, mam = aid_mosaic_set.take(am, np.zeros(n_amos, int))
            fm, mm = torch.cat([fm, fam]), torch.cat([mm, mam])
        fo, mo = vhr.take(o, np.zeros(n_obj, int))
        fine = torch.cat([*parts_f, fm, fo])
        mid = torch.cat([*parts_m, mm, mo])
        feats = model.features(fine, mid)
        scale = model.logit_scale.exp().clamp(max=100.0)
        losses = {}
        model.fusion.seen.clear()
        # ---- global tier: UCM captions, RESISC / extra prompts, VHR box sentences, mosaic composed captions
        n_glob = n_ucm + n_res + n_ext + n_aid + n_vsc + n_mos + n_amos
        g_tok, g_gates = model.global_tokens((feats[0][:n_glob], feats[1][:n_glob]))
        tids = [int(rng.choice(texts.ucm_train[i])) for i in u]
        keys = list(tids)
        for c in [resisc_classes[i] for i in r] + [extra_classes[i] for i in e]:
            tids.append(int(rng.choice(texts.scene_prompts[c])))
            keys.append(texts.prompt_key(c))  # all prompts of a class are one positive
        for i in a:
            t, key = texts.aid_text(rng, i, recipe.aid_sentence_share)
            tids.append(t)
            keys.append(key)
        for i in vs:
            tids.append(texts.vhr_scene[i])
            keys.append(texts.vhr_scene[i])
        for i in [*(mosaic_texts[j] for j in m), *(aid_mosaic_texts[j] for j in am)]:
            tids.append(i)
            keys.append(i)
        if weights["global"] > 0:
            losses["global"] = multi_positive_loss(g_tok, texts.emb[tids], torch.tensor(keys), scale)
        if teacher is not None:
            with torch.no_grad():
                reference = teacher(mid[:n_glob]).mean((2, 3))
            losses["geometry"] = geometry_loss(g_tok, reference)
        # ---- region tier: each mosaic window with its own source's text; VHR windows with their box sentences
        first_vsc = n_ucm + n_res + n_ext + n_aid
        r_tok, r_gates = model.region_tokens((feats[0][first_vsc:n_glob], feats[1][first_vsc:n_glob]))
        reg_tokens, reg_tids, reg_keys = [], [], []
        for k, i in enumerate(vs):
            for w, t in enumerate(texts.vhr_regions[i]):
                if t is not None:
                    reg_tokens.append(r_tok[k, w])
                    reg_tids.append(t)
                    reg_keys.append(t)
        for k, spec in enumerate([*(mosaics[i] for i in m), *(aid_mosaics[i] for i in am)]):
            offset = 0 if spec["grid"] == 2 else 4
            for w, (kind, j, label) in enumerate(spec["sources"]):
                reg_tokens.append(r_tok[n_vsc + k, offset + w])
                if kind == "ucm":
                    t = key = int(rng.choice(texts.ucm_train[j]))
                elif kind == "aid":
                    t, key = texts.aid_text(rng, j, recipe.aid_sentence_share)
                else:
                    t, key = int(rng.choice(texts.scene_prompts[label])), texts.prompt_key(label)
                reg_tids.append(t)
                reg_keys.append(key)
        if weights["region"] > 0:
            losses["region"] = multi_positive_loss(torch.stack(reg_tokens), texts.emb[reg_tids],
                                                   torch.tensor(reg_keys), scale)
        # ---- object tier: box-pooled object tokens with the object's phrase
        # Only the cells under some box of a crop go through the object head.
        box_w, box_crop, obj_tids, obj_keys = [], [], [], []
        for k, i in enumerate(o):
            objects = crops[i]["objects"]
            sample_boxes(rng, objects, 4, k, model.grid, texts, (box_w, box_crop, obj_tids, obj_keys))
        box_w = torch.stack(box_w)
        flat_rows, flat_cells, columns = [], [], {}
        for b, k in enumerate(box_crop):
            for c in torch.nonzero(box_w[b]).flatten().tolist():
                if (k, c) not in columns:
                    columns[(k, c)] = len(flat_rows)
                    flat_rows.append(n_glob + k)
                    flat_cells.append(c)
        weight = torch.zeros(len(box_crop), len(flat_rows))
        for b, k in enumerate(box_crop):
            for c in torch.nonzero(box_w[b]).flatten().tolist():
                weight[b, columns[(k, c)]] = box_w[b, c]
        cell_index = torch.tensor(flat_cells)
        fine_f, coarse_f = feats
        rows_t = torch.tensor(flat_rows)
        cell_feats = torch.cat([fine_f[rows_t, cell_index], coarse_f[rows_t, model.up_index[cell_index]]], -1)
        tok, o_gates = model.object_tokens(cell_feats)
        pooled = F.normalize(weight @ tok, dim=-1)
        if weights["object"] > 0:
            losses["object"] = multi_positive_loss(pooled, texts.emb[obj_tids], torch.tensor(obj_keys), scale)
        total = sum(weights[k] * v for k, v in losses.items() if k in weights)
        if "geometry" in losses:
            total = total + recipe.geometry * losses["geometry"]
        if config.experts and config.augment:
            losses["routing"] = semantic_routing_loss(model.fusion.seen)
            total = total + ROUTING_WEIGHT * losses["routing"]
        model.fusion.seen.clear()
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        if recipe.decay_to_init > 0:  # decoupled decay towards the ImageNet weights
            with torch.no_grad():
                shrink = opt.param_groups[1]["lr"] * recipe.decay_to_init
                for p, p0 in zip(top_params, top_init):
                    p.sub_(shrink * (p - p0))
        step += 1
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        since += 1
        if step % log_every == 0 or step == steps:
            msg = " ".join(f"{k} {v / since:.3f}" for k, v in running.items())
            since = 0
            print(f"[{tag}] step {step}/{steps} {msg} scale {float(scale):.1f} ({time.time() - start:.0f} s)", flush=True)
            running = {}
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, ckpt_path)
    torch.save(model.state_dict(), final_path)
    ckpt_path.unlink(missing_ok=True)
    return model.eval()


def locate_cells(objects: list, grid: int, rng: np.random.Generator, per_crop: int = 8
                 ) -> tuple[list[int], list[int], list[int]]:
    """Cells of one VHR-10 crop for the locate stage: (object cells, their class index, background cells).

    An object cell is at least half covered by one box (its class is that box's); a background
    cell is touched by no box, nor next to one (the crops list only the boxes at least 60 %
    inside, so a box's neighbours may hold an unlisted object's edge). At most ``per_crop`` of each.
    """
    cover, touched = cell_cover(objects, grid)
    best = cover.max(0)
    positive = np.flatnonzero(best >= 0.5)
    positive = rng.permutation(positive)[:per_crop]
    background = rng.permutation(np.flatnonzero(~touched.ravel()))[:per_crop]
    return positive.tolist(), cover.argmax(0)[positive].tolist(), background.tolist()


def cell_cover(objects: list, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """How much of each cell each class's boxes cover, (classes, G*G), and the (G, G) cells a box
    touches or borders."""
    cover = np.zeros((len(VHR10_CLASSES), grid * grid), np.float32)
    touched = np.zeros((grid, grid), bool)
    for label, box in objects:
        x0, y0, x1, y1 = (v * grid for v in box)
        for y in range(grid):
            fy = max(0.0, min(y + 1, y1) - max(y, y0))
            for x in range(grid):
                fx = max(0.0, min(x + 1, x1) - max(x, x0))
                if fx * fy > 0:
                    cover[VHR10_CLASSES.index(label), y * grid + x] += fx * fy
                    touched[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = True
    return cover, touched


def locate_loss(tokens: torch.Tensor, classes: torch.Tensor, is_object: torch.Tensor, class_emb: torch.Tensor,
                background_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each cell's softmax over [object classes, background texts], at the model's scale:
    an object cell's target is its class, a background cell's the background texts together (as the
    outlines' relevance, ``core.locate.relevance``, weighs a query against the background)."""
    logits = scale * tokens @ torch.cat([class_emb, background_emb]).t()
    log_p = logits.log_softmax(-1)
    n_cls = class_emb.shape[0]
    obj = -log_p[is_object, classes[is_object]]
    bg = -torch.logsumexp(log_p[~is_object, n_cls:], -1)
    return torch.cat([obj, bg]).mean()


def locate_stage(model: ImageModel, sets: dict, texts: Texts, cache: Path, tag: str, steps: int, seed: int,
                 recipe: Recipe) -> ImageModel:
    """Teach the object tier background: only the object head trains, on VHR-10 training crops.

    Each step: 24 crops; their object cells against their class and background cells against
    the background texts (:func:`locate_loss`, weight 1), and the box-pooled tokens against the
    object phrases as in the alignment (weight 0.5, so the tokens stay aligned with the names the
    caption decoder and text-to-box retrieval read). The global and region tiers do not change.
    Cached as ``align_<tag>_locate<steps>.pt``.
    """
    path = cache / f"align_{tag}_locate{steps}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True), strict=False)
        return model.eval()
    rng = np.random.default_rng(seed + 17)
    torch.manual_seed(seed + 17)
    params = list(model.object_head.parameters())
    trainable = {id(p) for p in params}
    saved = {}
    for p in model.parameters():
        saved[p] = p.requires_grad
        p.requires_grad_(id(p) in trainable)
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.05)
    rows = TrainingRows(sets, texts, recipe)
    vhr, crops = sets["vhr_train"], sets["vhr_train"].index["crops"]
    class_emb = F.normalize(torch.stack([texts.emb[texts.object_prompts[c]].mean(0) for c in texts.object_classes]), dim=-1)
    background_emb = F.normalize(torch.stack([texts.emb[r].mean(0) for r in texts.background_rows]), dim=-1)
    start = time.time()
    running: dict[str, float] = {}
    for step in range(steps):
        model.train()
        model.top.eval()
        for g in opt.param_groups:
            g["lr"] = 2e-4 * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        o = rng.choice(rows.crops, min(24, len(rows.crops)), replace=False)
        fine, mid = vhr.take(o, np.zeros(len(o), int))
        with torch.no_grad():
            fine_f, coarse_f = model.features(fine, mid)
        crop_rows, cells, classes, is_object = [], [], [], []
        box_w, box_rows, obj_tids, obj_keys = [], [], [], []
        for k, i in enumerate(o):
            objects = crops[i]["objects"]
            pos, cls, bg = locate_cells(objects, model.grid, rng)
            crop_rows += [k] * (len(pos) + len(bg))
            cells += pos + bg
            classes += cls + [0] * len(bg)
            is_object += [True] * len(pos) + [False] * len(bg)
            sample_boxes(rng, objects, 2, k, model.grid, texts, (box_w, box_rows, obj_tids, obj_keys))
        # every cell of every crop through the object head once: the cells for the locate loss and
        # the box-pooled tokens for the phrase loss both come from these
        n, cells_per = len(o), model.grid * model.grid
        every = torch.arange(cells_per).repeat(n)
        owner = torch.arange(n).repeat_interleave(cells_per)
        tok, _ = model.object_tokens(torch.cat([fine_f[owner, every], coarse_f[owner, model.up_index[every]]], -1))
        tok = tok.reshape(n, cells_per, -1)
        scale = model.logit_scale.exp().clamp(max=100.0).detach()
        losses = {"locate": locate_loss(tok[torch.tensor(crop_rows), torch.tensor(cells)], torch.tensor(classes),
                                        torch.tensor(is_object), class_emb, background_emb, scale)}
        pooled = F.normalize(torch.einsum("bc,bcd->bd", torch.stack(box_w), tok[torch.tensor(box_rows)]), dim=-1)
        losses["object"] = multi_positive_loss(pooled, texts.emb[obj_tids], torch.tensor(obj_keys), scale)
        model.fusion.seen.clear()
        total = losses["locate"] + 0.5 * losses["object"]
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            n = 50 if (step + 1) % 50 == 0 else (step + 1) % 50
            print(f"[{tag} locate] step {step + 1}/{steps} " + " ".join(f"{k} {v / n:.3f}" for k, v in running.items())
                  + f" ({time.time() - start:.0f} s)", flush=True)
            running = {}
    for p, flag in saved.items():
        p.requires_grad_(flag)
    torch.save(model.state_dict(), path)
    return model.eval()


@torch.no_grad()
def calibrate_locate(model: ImageModel, sets: dict, texts: Texts, beta: float = 2.0, max_crops: int = 400,
                     seed: int = 0) -> dict:
    """The outline threshold of a model: the relevance (``core.locate.relevance``, the query's softmax
    against the background texts) that maximises F-beta of cells under boxes of the queried class
    against every other cell, on VHR-10 training crops, each of the ten class names a query in turn.

    Returns ``{"threshold", "f_beta", "beta", "auc", "cells"}`` (the bundle's manifest keeps it
    under ``"locate"``; recall weighs more than precision at ``beta=2``: an outline is a lead).
    """
    from rs_vlm_plugin.core.locate.relevance import relevance

    vhr, crops = sets["vhr_train"], sets["vhr_train"].index["crops"]
    rows = np.flatnonzero([bool(c["objects"]) for c in crops])
    rows = np.random.default_rng(seed).permutation(rows)[:max_crops]
    grid = model.grid
    tokens, labels = [], []
    for k in range(0, len(rows), 32):
        part = rows[k:k + 32]
        fine, mid = vhr.take(part, np.zeros(len(part), int))
        _, _, objects, _ = model(fine, mid)
        tokens.append(objects.numpy().reshape(-1, objects.shape[-1]))
        labels += [cell_cover(crops[i]["objects"], grid)[0] >= 0.5 for i in part]
    tokens = np.concatenate(tokens)
    labels = np.concatenate(labels, axis=1)  # (classes, cells)
    background = F.normalize(torch.stack([texts.emb[r].mean(0) for r in texts.background_rows]), dim=-1).numpy()
    scale = float(model.logit_scale.exp())
    scores, truth = [], []
    for c, name in enumerate(texts.object_classes):
        query = F.normalize(texts.emb[texts.object_prompts[name]].mean(0), dim=-1).numpy()
        scores.append(relevance(tokens, query, background, scale))
        truth.append(labels[VHR10_CLASSES.index(name)])
    scores, truth = np.concatenate(scores).astype(np.float64), np.concatenate(truth)
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(truth[order])
    precision = hits / np.arange(1, len(order) + 1)
    recall = hits / max(1, truth.sum())
    f = (1 + beta ** 2) * precision * recall / np.maximum(beta ** 2 * precision + recall, 1e-12)
    best = int(np.argmax(f))
    negatives = (~truth).sum()
    ranks = np.empty(len(scores))
    ranks[order[::-1]] = np.arange(1, len(scores) + 1)  # ascending ranks (ties broken by order)
    auc = float((ranks[truth].sum() - truth.sum() * (truth.sum() + 1) / 2) / max(1, truth.sum() * negatives))
    threshold = float(np.clip(scores[order[best]], 1e-4, 1 - 1e-6))
    return {"threshold": round(threshold, 6), "f_beta": round(float(f[best]), 4), "beta": beta,
            "auc": round(auc, 4), "cells": int(len(truth) // len(texts.object_classes))}


# --------------------------------------------------------------------------- token caches


@torch.no_grad()
def encode_set(model: ImageModel, fs, views: list[int], rows: np.ndarray | None = None, batch: int = 64,
               global_only: bool = False) -> dict:
    """Augmented tokens of cached trunk features: global (N, V, D), regions, pooled objects, routing means."""
    model.eval()
    rows = np.arange(fs.fine.shape[0]) if rows is None else rows
    out = {"global": [], "regions": [], "objects": []}
    routing = torch.zeros(3, model.fusion.router.out_features)
    counts = torch.zeros(3)
    for v in views:
        g_all, r_all, o_all = [], [], []
        for k in range(0, len(rows), batch):
            fine, mid = fs.take(rows[k:k + batch], np.full(len(rows[k:k + batch]), v))
            if global_only:
                g_all.append(model.global_tokens(model.features(fine, mid))[0])
                continue
            g, r, o, gates = model(fine, mid)
            g_all.append(g)
            r_all.append(r.half())
            o_all.append(pool_objects(o, model.grid).half())
            routing[2] += gates[:, 0].sum(0)
            routing[1] += gates[:, 1:14].sum((0, 1))
            routing[0] += gates[:, 14:].sum((0, 1))
            counts += torch.tensor([gates[:, 14:].shape[0] * gates[:, 14:].shape[1], gates.shape[0] * 13, gates.shape[0]])
        out["global"].append(torch.cat(g_all))
        if not global_only:
            out["regions"].append(torch.cat(r_all))
            out["objects"].append(torch.cat(o_all))
    out = {k: torch.stack(v, 1) for k, v in out.items() if v}
    out["routing"] = (routing / counts[:, None]).numpy()
    return out


@torch.no_grad()
def box_tokens(model: ImageModel, fs) -> tuple[np.ndarray, list[str]]:
    """One pooled object token per held-back box crop, and its label."""
    model.eval()
    crops = fs.index["crops"]
    embs, labels = [], []
    for k in range(0, len(crops), 64):
        rows = np.arange(k, min(len(crops), k + 64))
        fine, mid = fs.take(rows, np.zeros(len(rows), int))
        tok, _ = model.object_tokens(model.cells(model.features(fine, mid)))
        for j, i in enumerate(rows):
            for label, box in crops[i]["objects"]:
                w = box_cell_weights(tuple(box), model.grid)
                embs.append(F.normalize(w @ tok[j], dim=-1))
                labels.append(label)
    return torch.stack(embs).numpy(), labels


def _prompt_matrix(texts: Texts, prompts: dict, classes: list[str]) -> np.ndarray:
    return torch.stack([texts.mean(prompts[c]) for c in classes]).numpy()


KNOWLEDGE_BETAS = (5.0, 10.0, 20.0, 40.0)
KNOWLEDGE_BASE_WEIGHTS = (1.0, 2.0, 4.0, 8.0)
STACKING_GAMMAS = tuple(round(0.05 * k, 2) for k in range(21))  # calibrated stacking margins, 0 to 1


def trained_class_names(texts: Texts, unseen: set[str], recipe: Recipe) -> list[str]:
    """Readable names of every class a recipe trains on (scene, land-use and object classes)."""
    names = [c for c in texts.ucm_classes if group("ucm", c) not in unseen]
    names += [c for c in texts.resisc_classes if group("resisc", c) not in unseen]
    if recipe.extra:
        names += [c for c in texts.extra_classes if group("extra", c) not in unseen]
    names += [c for c in texts.object_classes if group("vhr", c) not in unseen]
    if recipe.aid:
        names += [c for c in texts.aid_classes if group("aid", c) not in unseen]
    return sorted({feat.readable(c) for c in names})


def class_familiarity(classes: list[str], trained: list[str], cache: Path) -> np.ndarray:
    """(C,) each class's familiarity to the trained classes (core/seen_bias.py), through the class prompts."""
    names = sorted({feat.readable(c) for c in classes} | set(trained))
    emb = feat.text_embeddings([p.format(n) for n in names for p in feat.SCENE_PROMPTS], cache, "familiarity")
    emb = emb.reshape(len(names), len(feat.SCENE_PROMPTS), -1).mean(1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    row = {n: k for k, n in enumerate(names)}
    return familiarity(emb[[row[feat.readable(c)] for c in classes]], emb[[row[n] for n in trained]])


def evaluate_alignment(model: ImageModel, sets: dict, texts: Texts, unseen: set[str], trained: list[str],
                       cache: Path, gamma: float | None = None) -> dict:
    """UCM val retrieval, RESISC12 held-back scene accuracy, VHR-10 held-back object retrieval, and the
    generalised zero-shot split (seen / unseen / harmonic mean) of UCM val and RESISC12 held-back,
    plain, with query-time knowledge, and with calibrated stacking (core/seen_bias.py).

    Args:
        trained: Readable names of the classes the model was trained on (familiarity).
        gamma: The stacking margin; None calibrates it on UCM val's leave-classes-out split
            (the harmonic mean of seen and unseen accuracy), never on RESISC12.
    """
    val = encode_set(model, sets["ucm_val"], [0])
    img = val["global"][:, 0].numpy()
    txt = texts.emb[[t for rows in texts.ucm_val for t in rows]].numpy()
    out = {"retrieval": retrieval_recalls(img, txt, 5), "routing": val["routing"].tolist()}
    ucm_classes = texts.ucm_classes
    ucm_sims = img @ _prompt_matrix(texts, texts.ucm_prompts, ucm_classes).T
    ucm_pred = np.argmax(ucm_sims, axis=1)
    ucm_truth = np.asarray([ucm_classes.index(c) for c in sets["ucm_val"].index["classes"]])
    resisc = sets["resisc"]
    held = np.flatnonzero(np.asarray(resisc.index["held_out"]))
    enc = encode_set(model, resisc, [0], held, global_only=True)
    classes = texts.resisc_classes
    labels = np.asarray([classes.index(resisc.index["classes"][i]) for i in held])
    res_img = enc["global"][:, 0].numpy()
    res_prompts = _prompt_matrix(texts, texts.scene_prompts, classes)
    out["scene_accuracy"] = scene_accuracy(res_img, res_prompts, labels)
    out["scene_images"] = int(len(held))
    res_sims = res_img @ res_prompts.T
    res_pred = np.argmax(res_sims, axis=1)
    # AID val: the 10 % of AID held back by name hash, zero-shot over its 30 class names.
    aid_classes = texts.aid_classes
    aid_img = aid_sims = aid_labels = None
    if "aid" in sets and aid_classes:
        aid = sets["aid"]
        aid_held = np.flatnonzero(np.asarray(aid.index["held_out"]))
        aid_img = encode_set(model, aid, [0], aid_held, global_only=True)["global"][:, 0].numpy()
        aid_labels = np.asarray([aid_classes.index(aid.index["classes"][i]) for i in aid_held])
        aid_sims = aid_img @ _prompt_matrix(texts, texts.aid_prompts, aid_classes).T
        out["aid_accuracy"] = float(100 * np.mean(np.argmax(aid_sims, axis=1) == aid_labels))
        out["aid_images"] = int(len(aid_held))
    aid_unseen = {c for c in aid_classes if group("aid", c) in unseen}

    def gzsl(ucm: np.ndarray, resisc: np.ndarray, aid_pred: np.ndarray | None = None) -> dict:
        """Seen / unseen / H of predictions on UCM val, RESISC12 held-back and AID val, and their mean."""
        parts = {"ucm_val": generalised_zero_shot(ucm, ucm_truth, ucm_classes,
                                                  {c for c in ucm_classes if group("ucm", c) in unseen}),
                 "resisc_held_back": generalised_zero_shot(resisc, labels, classes,
                                                           {c for c in classes if group("resisc", c) in unseen})}
        if aid_pred is not None:
            parts["aid_val"] = generalised_zero_shot(aid_pred, aid_labels, aid_classes, aid_unseen)
        return {**parts, "mean": {k: float(np.mean([parts[d][k] for d in parts])) for k in ("seen", "unseen", "H")}}

    def aid_argmax(scores) -> np.ndarray | None:
        return None if aid_img is None else np.argmax(scores(), axis=1)

    out["gzsl"] = gzsl(ucm_pred, res_pred, aid_argmax(lambda: aid_sims))
    # Query-time knowledge: the combination calibrated on the seen classes of UCM val, then
    # measured on both splits like the plain prompts.
    ucm_seen = np.asarray([group("ucm", ucm_classes[t]) not in unseen for t in ucm_truth])
    best = None
    for beta in KNOWLEDGE_BETAS:
        for base_weight in KNOWLEDGE_BASE_WEIGHTS:
            setting = QueryKnowledge(beta, base_weight)
            pred = np.argmax(texts.expanded(ucm_classes, setting).scores(img), axis=1)
            acc = float(np.mean(pred[ucm_seen] == ucm_truth[ucm_seen]))
            if best is None or acc > best[0] + 1e-9:
                best = (acc, setting)
    setting = best[1]
    ucm_k = np.argmax(texts.expanded(ucm_classes, setting).scores(img), axis=1)
    res_k = np.argmax(texts.expanded(classes, setting).scores(res_img), axis=1)
    out["query_knowledge"] = {"beta": setting.beta, "base_weight": setting.base_weight, "enabled": True,
                              "calibrated_on": "UCM val, seen classes: accuracy over a grid of beta and base weight"}
    out["gzsl_knowledge"] = gzsl(ucm_k, res_k, aid_argmax(lambda: texts.expanded(aid_classes, setting).scores(aid_img)))
    out["scene_accuracy_knowledge"] = float(100 * np.mean(res_k == labels))
    # Calibrated stacking: every class's score less gamma times its familiarity to the trained classes.
    ucm_off = stacking_offsets(class_familiarity(ucm_classes, trained, cache), 1.0)
    res_off = stacking_offsets(class_familiarity(classes, trained, cache), 1.0)
    aid_off = stacking_offsets(class_familiarity(aid_classes, trained, cache), 1.0) if aid_img is not None else None
    ucm_unseen = {c for c in ucm_classes if group("ucm", c) in unseen}
    sweep = {}
    if ucm_unseen:
        for g in STACKING_GAMMAS:
            sweep[g] = generalised_zero_shot(np.argmax(ucm_sims + g * ucm_off, axis=1), ucm_truth, ucm_classes,
                                             ucm_unseen)["H"]
    chosen = float(gamma if gamma is not None else max(sweep, key=lambda g: (sweep[g], -g)) if sweep else 0.0)
    out["seen_bias"] = {"gamma": chosen, "trained_classes": trained,
                        "calibrated_on": "given" if gamma is not None else
                        "UCM val, leave-classes-out split: harmonic mean of seen and unseen accuracy over gamma "
                        "0-1 (RESISC12 held-back is not used)", "ucm_val_H_by_gamma": sweep}
    out["gzsl_stacked"] = gzsl(np.argmax(ucm_sims + chosen * ucm_off, axis=1),
                               np.argmax(res_sims + chosen * res_off, axis=1),
                               aid_argmax(lambda: aid_sims + chosen * aid_off))
    out["gzsl_stacked_knowledge"] = gzsl(
        np.argmax(texts.expanded(ucm_classes, setting).scores(img) + chosen * ucm_off, axis=1),
        np.argmax(texts.expanded(classes, setting).scores(res_img) + chosen * res_off, axis=1),
        aid_argmax(lambda: texts.expanded(aid_classes, setting).scores(aid_img) + chosen * aid_off))
    out["scene_accuracy_stacked"] = float(100 * np.mean(np.argmax(res_sims + chosen * res_off, axis=1) == labels))
    boxes, box_labels = box_tokens(model, sets["vhr_val"])
    queries = texts.object_classes
    q_emb = _prompt_matrix(texts, texts.object_prompts, queries)
    out["objects"] = object_retrieval(boxes, box_labels, q_emb, queries, 10)
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class DecoderData:
    """What decoder fine-tuning reads besides image tokens."""

    pretrained: CaptionDecoder
    vocab: list[str]
    corpus: list[str]  # text-only sentences (distinct), for the text-only share of each step
    corpus_emb: torch.Tensor
    weak: dict[str, list[str]]  # scene class -> weakly paired corpus sentences (RESISC, extra)


def decoder_sources(model: ImageModel, sets: dict, texts: Texts, rows: TrainingRows, recipe: Recipe,
                    data: DecoderData, n_views: int) -> list[PairedSource]:
    """The paired sets decoder fine-tuning reads: UCM captions; with ``weak_captions``, RESISC and
    extra images with corpus sentences of their class and VHR-10 images with their box sentences."""
    ucm = sets["ucm_train"]
    sources = [PairedSource("ucm", encode_set(model, ucm, list(range(n_views)), rows.ucm),
                            [ucm.index["sentences"][i] for i in rows.ucm])]
    if not recipe.weak_captions:
        return sources
    for tag, picked, per_epoch in (("resisc", rows.resisc, 1600), ("extra", rows.extra, 400)):
        if len(picked):
            classes = sets[tag].index["classes"]
            sources.append(PairedSource(tag, encode_set(model, sets[tag], [0], picked),
                                        [data.weak[classes[i]] for i in picked], per_epoch))
    if len(rows.aid):
        aid = sets["aid"]
        sources.append(PairedSource("aid", encode_set(model, aid, [0, 1], rows.aid),
                                    [aid.index["sentences"][i] for i in rows.aid], recipe.aid_decoder_per_epoch))
    if len(rows.vhr_scene) and recipe.box_sentences_in_decoder:
        sources.append(PairedSource("vhr_scene", encode_set(model, sets["vhr_scene"], [0], rows.vhr_scene),
                                    [[texts.items[texts.vhr_scene[i]]] for i in rows.vhr_scene]))
    return sources


def evaluate_captions(model: ImageModel, decoder: CaptionDecoder, sets: dict, texts: Texts, vocab: list[str],
                      val_cache: dict, val_hyps: list[str], unseen: set[str], drop: str | None) -> dict:
    """Caption truthfulness: RESISC12 held-back, UCM val, and the images of the unseen classes of both."""
    resisc = sets["resisc"]
    held = np.flatnonzero(np.asarray(resisc.index["held_out"]))
    res_hyps = generate(decoder, encode_set(model, resisc, [0], held), vocab, drop_tier=drop)
    res_labels = [resisc.index["classes"][i] for i in held]
    ucm_labels = sets["ucm_val"].index["classes"]
    out = {"resisc_held_back": truthfulness(res_hyps, res_labels, "resisc"),
           "ucm_val": truthfulness(val_hyps, ucm_labels, "ucm")}
    hits = [truthful_hits([h], [lab], "ucm")[0] for h, lab in zip(val_hyps, ucm_labels) if group("ucm", lab) in unseen]
    hits += [truthful_hits([h], [lab], "resisc")[0] for h, lab in zip(res_hyps, res_labels)
             if group("resisc", lab) in unseen]
    if "aid" in sets:
        aid = sets["aid"]
        aid_held = np.flatnonzero(np.asarray(aid.index["held_out"]))
        aid_hyps = generate(decoder, encode_set(model, aid, [0], aid_held), vocab, drop_tier=drop)
        aid_labels = [aid.index["classes"][i] for i in aid_held]
        out["aid_val"] = truthfulness(aid_hyps, aid_labels, "aid")
        hits += [truthful_hits([h], [lab], "aid")[0] for h, lab in zip(aid_hyps, aid_labels)
                 if group("aid", lab) in unseen]
        refs = {str(k): aid.index["sentences"][i] for k, i in enumerate(aid_held)}
        out["aid_val_captioning"] = caption_scores(refs, {str(k): h for k, h in enumerate(aid_hyps)}, meteor=False)
        out["aid_examples"] = [{"file": aid.index["files"][aid_held[k]], "caption": aid_hyps[k]}
                               for k in range(0, len(aid_held), max(1, len(aid_held) // 15))]
    out["unseen"] = {"images": len(hits), "truthful": float(100 * np.mean(hits)) if hits else 0.0}
    out["examples"] = [{"file": resisc.index["files"][held[k]], "caption": res_hyps[k]}
                       for k in range(0, len(held), max(1, len(held) // 12))]
    return out


def run_variant(name: str, switches: dict, data: Path, sets: dict, texts: Texts, kb: dict, base: ModelConfig,
                cache: Path, steps: int, dec: DecoderData, dec_epochs: int, seed: int, n_views: int, meteor: bool,
                recipe: Recipe, gamma: float | None = None) -> dict:
    """Train one variant (alignment + decoder fine-tuning) and evaluate it on the val splits
    (``gamma``: the calibrated-stacking margin, None to calibrate it, see :func:`evaluate_alignment`)."""
    config = copy.deepcopy(base)
    recipe = Recipe(**{**recipe.to_dict(), **switches.get("recipe", {})})
    drop = switches.get("tier")
    config.augment = switches.get("augment", True)
    config.experts = switches.get("experts", True)
    config.fine_blocks = recipe.open_blocks
    if drop:
        config.tiers = {**config.tiers, drop: False}
    tag = name.replace(" ", "_") + f"_{steps}"
    t0 = time.time()
    model = align(sets, texts, kb, config, cache, tag, steps, seed, drop_tier=drop, recipe=recipe)
    if recipe.locate_steps and not drop:
        model = locate_stage(model, sets, texts, cache, tag, recipe.locate_steps, seed, recipe)
        tag = f"{tag}_locate{recipe.locate_steps}"  # the decoder reads the object tokens: its own cache
    align_s = time.time() - t0
    rows = TrainingRows(sets, texts, recipe)
    unseen = rows.unseen  # the leave-classes-out groups, or none
    metrics = evaluate_alignment(model, sets, texts, unseen, trained_class_names(texts, unseen, recipe), cache,
                                 gamma)
    metrics["recipe"] = recipe.to_dict()
    if dec_epochs == 0:  # an image-space ablation: no decoder, no caption metrics
        metrics["seconds"] = metrics["align_seconds"] = round(align_s, 1)
        _print_variant(name, metrics)
        return {"config": config.to_dict(), "metrics": metrics, "model": model, "decoder": None}
    dec_path = cache / f"decoder_{tag}_{dec_epochs}x{n_views}.pt"
    if dec_path.exists():
        decoder = CaptionDecoder(dec.pretrained.config)
        decoder.load_state_dict(torch.load(dec_path, weights_only=True))
        decoder.eval()
    else:
        sources = decoder_sources(model, sets, texts, rows, recipe, dec, n_views)
        decoder = finetune_decoder(dec.pretrained, sources, dec.vocab, config, dec_epochs, seed, drop,
                                   text=(dec.corpus_emb, dec.corpus), text_share=recipe.text_share)
        del sources
        torch.save(decoder.state_dict(), dec_path)
    val_cache = encode_set(model, sets["ucm_val"], [0])
    hyps = generate(decoder, val_cache, dec.vocab, drop_tier=drop)
    refs = sets["ucm_val"].index["sentences"]
    metrics["captioning"] = caption_scores({str(i): r for i, r in enumerate(refs)},
                                           {str(i): h for i, h in enumerate(hyps)}, meteor=meteor)
    metrics["examples"] = [{"file": sets["ucm_val"].index["files"][i], "caption": hyps[i], "reference": refs[i][0]}
                           for i in range(0, len(hyps), 30)]
    metrics["truthfulness"] = evaluate_captions(model, decoder, sets, texts, dec.vocab, val_cache, hyps,
                                                unseen, drop)
    metrics["qa"] = calibrate_presence(val_cache, sets["ucm_val"].index["classes"], texts,
                                       float(model.logit_scale.exp()))
    metrics["seconds"] = round(time.time() - t0, 1)
    metrics["align_seconds"] = round(align_s, 1)
    _print_variant(name, metrics)
    return {"config": config.to_dict(), "metrics": metrics, "model": model, "decoder": decoder}


def _print_variant(name: str, metrics: dict) -> None:
    """One line of a variant's figures (caption figures when it has a decoder)."""
    gz = metrics["gzsl"]["mean"]
    captions = ""
    if "captioning" in metrics:
        captions = (f"BLEU-4 {metrics['captioning']['BLEU-4']:.3f} CIDEr {metrics['captioning']['CIDEr']:.3f} "
                    f"truthful RESISC {metrics['truthfulness']['resisc_held_back']['truthful']:.1f} unseen "
                    f"{metrics['truthfulness']['unseen']['truthful']:.1f}")
    print(f"[{name}] mR {metrics['retrieval']['mR']:.1f} scene {metrics['scene_accuracy']:.1f} "
          f"AID {metrics.get('aid_accuracy', float('nan')):.1f} "
          f"GZSL seen {gz['seen']:.1f} unseen {gz['unseen']:.1f} H {gz['H']:.1f} "
          f"(with knowledge: unseen {metrics['gzsl_knowledge']['mean']['unseen']:.1f} "
          f"H {metrics['gzsl_knowledge']['mean']['H']:.1f}; stacked, gamma {metrics['seen_bias']['gamma']:.2f}: "
          f"seen {metrics['gzsl_stacked']['mean']['seen']:.1f} unseen {metrics['gzsl_stacked']['mean']['unseen']:.1f} "
          f"H {metrics['gzsl_stacked']['mean']['H']:.1f}) "
          f"obj P@10 {metrics['objects']['p@10']:.1f} {captions}", flush=True)


def stacking_margin(report: Path, row: str) -> float:
    """The calibrated-stacking margin of a leave-classes-out row of ``open_vocabulary.json`` (0 without one).

    The final model trains on every class, so its margin comes from the same recipe trained
    without the left-out ones.
    """
    if not report.exists():
        print(f"no {report}: the final model gets no calibrated stacking (run with --leave-out)", flush=True)
        return 0.0
    rows = json.loads(report.read_text(encoding="utf-8"))["rows"]
    return float(rows[row]["seen_bias"]["gamma"]) if row in rows and "seen_bias" in rows[row] else 0.0


def calibrate_presence(val_cache: dict, classes: list[str], texts: Texts, logit_scale: float) -> dict:
    """The "is there X?" threshold: balanced accuracy over every (UCM val image, UCM class) pair,
    with the contrastive presence score the runtime uses (core/qa.py)."""
    g = val_cache["global"][:, 0].numpy()
    r = val_cache["regions"][:, 0].float().numpy()
    kb = texts.kb_embeddings().numpy()
    scores, positive = [], []
    for c in texts.ucm_classes:
        q = texts.mean(texts.presence_prompts[c]).numpy()
        scores.append(presence_scores(g, r, q, alternatives=kb, logit_scale=logit_scale))
        positive.append(np.asarray(classes) == c)
    threshold, accuracy = calibrate_threshold(np.concatenate(scores), np.concatenate(positive))
    return {"threshold": threshold, "balanced_accuracy": 100 * accuracy, "pairs": int(sum(len(s) for s in scores)),
            "score": "contrastive presence probability (core/qa.py)",
            "calibrated_on": "UCM val: every image against every class name"}


def save_weights(out: Path, model: ImageModel, decoder: CaptionDecoder, vocab: list[str], meta: dict,
                 image_mean: np.ndarray | None = None) -> None:
    """Trained parameters (fp16) with the vocabulary and metadata, in one npz."""
    arrays = {}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    for k, v in model.state_dict().items():
        if k.startswith("top.") or k not in frozen:
            dtype = np.float32 if k.endswith("running_var") or k.endswith("running_mean") or k == "logit_scale" else np.float16
            arrays[f"image.{k}"] = v.detach().numpy().astype(dtype)
    for k, v in decoder.state_dict().items():
        arrays[f"decoder.{k}"] = v.detach().numpy().astype(np.float16)
    if image_mean is not None:
        arrays["stats.image_mean"] = np.asarray(image_mean, np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, meta_json=np.asarray(json.dumps(meta)), vocab_json=np.asarray(json.dumps(vocab)), **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)", flush=True)


def main(argv=None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Train the RS-VLM model.")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cache", type=Path, default=Path(".cache/train/rsvlm"))
    parser.add_argument("--steps", type=int, default=600, help="alignment steps of the final model")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--decoder-epochs", type=int, default=10)
    parser.add_argument("--decoder-views", type=int, default=4)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="v4", help="the final model's recipe")
    parser.add_argument("--lco-recipes", default="v2,{recipe}",
                        help="recipes trained on the leave-classes-out split, comma-separated; NAME:0 trains the "
                             "image space only (no decoder); {recipe} is the final model's")
    parser.add_argument("--leave-out", action="store_true",
                        help="also train issue 3's recipe and the chosen recipe without the leave-classes-out "
                             "choice and report seen / unseen / harmonic mean (out/train/open_vocabulary.json)")
    parser.add_argument("--ablations", action="store_true",
                        help="also train and evaluate the ablation variants (on the leave-classes-out split)")
    parser.add_argument("--ablation-steps", type=int, default=150)
    parser.add_argument("--ablation-decoder-epochs", type=int, default=3,
                        help="decoder epochs of each ablation variant (0: image space only, no caption metrics)")
    parser.add_argument("--ablation-names", default=",".join(ABLATIONS),
                        help="comma-separated ablation variants to run, in the order given")
    parser.add_argument("--skip-final", action="store_true", help="stop after the leave-classes-out stages")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--mosaics", type=int, default=4000, help="2x2 and 3x3 mosaics built for the region tier")
    parser.add_argument("--locate-steps", type=int, default=None,
                        help="steps of the final model's locate stage (default: its recipe's; 0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=Path("out/train"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    t_start = time.time()
    base = ModelConfig()
    kb = json.loads(KNOWLEDGE_BASE.read_text(encoding="utf-8"))
    print("stage features", flush=True)
    raw = feat.build_all(args.data, args.cache, dataclasses.replace(base, fine_blocks=feat.CACHED_FINE_BLOCKS),
                         n_mosaics=args.mosaics, seed=args.seed)
    by_blocks = {feat.CACHED_FINE_BLOCKS: raw}

    def sets_for(recipe: Recipe) -> dict:
        """The cached sets as the recipe's trainable blocks read them (carried through the frozen rest)."""
        blocks = recipe.open_blocks
        if blocks not in by_blocks:
            config = dataclasses.replace(base, fine_blocks=blocks)
            by_blocks[blocks] = {tag: feat._run_blocks(args.cache, config, tag, fs, feat.CACHED_FINE_BLOCKS)
                                 for tag, fs in raw.items()}
        return by_blocks[blocks]

    sets = sets_for(Recipe())
    texts = Texts(sets, kb, args.cache)
    print(f"{len(texts.items)} alignment texts", flush=True)

    print("stage decoder-pretrain", flush=True)
    ucm_index = sets["ucm_train"].index
    text_corpus = read_corpus(args.data)
    by_class = read_corpus_by_class(args.data)
    weak = weak_captions(texts.scene_classes, "resisc", by_class)
    box_sents = [feat.normalise_caption(texts.items[t]) for t in texts.vhr_scene if t is not None]
    ucm_sents = [feat.normalise_caption(s) for sents in ucm_index["sentences"] for s in sents]
    # The vocabulary belongs to the pre-trained decoder checkpoints: built once, then read back, so
    # that a change in the weak pairs does not invalidate every cached decoder.
    vocab_path = args.cache / "vocab.json"
    if vocab_path.exists():
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    else:
        vocab = build_vocab(text_corpus + ucm_sents + box_sents + [w for ws in weak.values() for w in ws])
        vocab_path.write_text(json.dumps(vocab), encoding="utf-8")
    base.vocab_size = len(vocab)
    args.report.mkdir(parents=True, exist_ok=True)
    report = {"seed": args.seed}

    def decoder_data(leave_out: bool) -> DecoderData:
        """Text-only pre-training on the corpora plus UCM train captions (of seen classes only when leaving out;
        then the RSICD / RSITMD sentences of files of the left-out classes leave the corpus too: RSICD's are
        AID's captions)."""
        unseen = set(feat.leave_out(sets)["groups"]) if leave_out else set()
        ucm = [feat.normalise_caption(s) for sents, c in zip(ucm_index["sentences"], ucm_index["classes"])
               if group("ucm", c) not in unseen for s in sents]
        dropped = {s for c, sents in by_class.items() if group("rsicd", c) in unseen for s in sents}
        unique = sorted(set(s for s in text_corpus if s not in dropped) | set(ucm))
        emb = torch.from_numpy(feat.text_embeddings(unique, args.cache, "corpus_lco" if leave_out else "corpus"))
        print(f"decoder corpus {len(unique)} distinct sentences, vocabulary {len(vocab)}", flush=True)
        tag = "decoder_pretrain_lco" if leave_out else "decoder_pretrain"
        pre = pretrain_decoder(base, unique, emb, vocab, args.cache, args.pretrain_epochs, args.seed, tag=tag)
        return DecoderData(pre, vocab, unique, emb, weak)

    if args.leave_out or args.ablations:
        lco = decoder_data(True)
        choice = feat.leave_out(sets)
        rows = {}
        for item in args.lco_recipes.format(recipe=args.recipe).split(","):
            recipe_name, _, epochs = item.strip().partition(":")
            if recipe_name not in RECIPES:
                parser.error(f"unknown recipe {recipe_name!r} in --lco-recipes; choose from {sorted(RECIPES)}")
            name = f"lco {recipe_name}"
            recipe = dataclasses.replace(RECIPES[recipe_name], leave_out=True)
            print(f"stage leave-classes-out: {name}", flush=True)
            res = run_variant(name, {}, args.data, sets_for(recipe), texts, kb, base, args.cache, args.steps, lco,
                              int(epochs) if epochs else args.decoder_epochs, args.seed, args.decoder_views,
                              meteor=False, recipe=recipe)
            rows[name] = {k: v for k, v in res["metrics"].items()}
        report["open_vocabulary"] = {"leave_out": choice, "steps": args.steps, "rows": rows}
        (args.report / "open_vocabulary.json").write_text(json.dumps(report["open_vocabulary"], indent=2, default=float))
        if args.ablations:
            ab_rows = {}
            names = [n.strip() for n in args.ablation_names.split(",") if n.strip()]
            unknown = [n for n in names if n not in ABLATIONS]
            if unknown:
                parser.error(f"unknown ablation variants {unknown}; choose from {list(ABLATIONS)}")
            for name in names:
                switches = ABLATIONS[name]
                print(f"stage ablation (leave-classes-out): {name}", flush=True)
                res = run_variant(f"lco {name}", switches, args.data, sets_for(RECIPES[args.recipe]), texts, kb,
                                  base, args.cache,
                                  args.ablation_steps, lco, args.ablation_decoder_epochs, args.seed, 2, meteor=False,
                                  recipe=dataclasses.replace(RECIPES[args.recipe], leave_out=True))
                ab_rows[name] = res["metrics"]
                report["ablations"] = {"steps": args.ablation_steps, "decoder_epochs": args.ablation_decoder_epochs,
                                       "decoder_views": 2, "split": "leave-classes-out", "leave_out": choice,
                                       "rows": ab_rows}
                # written after every row, so that an interrupted run leaves the rows it finished
                (args.report / "ablations.json").write_text(json.dumps(report["ablations"], indent=2, default=float))

    if args.skip_final:
        return 0
    print("stage align + decoder (final model)", flush=True)
    full = decoder_data(False)
    recipe = RECIPES[args.recipe]
    if args.locate_steps is not None:
        recipe = dataclasses.replace(recipe, locate_steps=args.locate_steps)
    sets = sets_for(recipe)
    res = run_variant("final", {}, args.data, sets, texts, kb, base, args.cache, args.steps, full,
                      args.decoder_epochs, args.seed, args.decoder_views, meteor=True, recipe=recipe, gamma=0.0)
    # Every class is seen here, so the margin is the one the same recipe calibrated without the
    # left-out classes (read now: a leave-classes-out run may have finished beside this one).
    res["metrics"]["seen_bias"].update(gamma=stacking_margin(args.report / "open_vocabulary.json", f"lco {args.recipe}"),
                                       calibrated_on=f"the leave-classes-out run of the {args.recipe} recipe "
                                                     "(UCM val H), see open_vocabulary.json")
    with torch.no_grad():  # a concept's mean similarity to training images becomes its ranking bias
        image_mean = encode_set(res["model"], sets["ucm_train"], [0], global_only=True)["global"][:, 0].mean(0)
    meta = {"config": res["config"], "seed": args.seed, "qa": res["metrics"]["qa"], "align_steps": args.steps,
            "pretrain_epochs": args.pretrain_epochs, "decoder_epochs": args.decoder_epochs,
            "decoder_views": args.decoder_views, "tier_weights": TIER_WEIGHTS, "routing_weight": ROUTING_WEIGHT,
            "recipe": {"name": args.recipe, **recipe.to_dict()},
            "query_knowledge": res["metrics"]["query_knowledge"],
            "seen_bias": {k: v for k, v in res["metrics"]["seen_bias"].items() if k != "ucm_val_H_by_gamma"},
            "logit_scale": float(res["model"].logit_scale.exp()),
            "locate": calibrate_locate(res["model"], sets, texts, seed=args.seed),
            "val": {k: v for k, v in res["metrics"].items() if k != "examples"},
            "data": ["UCM train (captions)", "RESISC12 train minus 20% held back (class prompts)",
                     "RESISC45 airplane and airport minus 20% held back (class prompts)",
                     "mosaics of UCM and RESISC12", "VHR-10 minus 20% held back (boxes; box-to-caption sentences)",
                     *(["AID minus 10% held back (RSICD sentences, class prompts, mosaics; decoder pairs)"]
                       if recipe.aid and "aid" in sets else []),
                     "RSICD/RSITMD/Sydney caption text (decoder pre-training, weak pairs, text-only share)"],
            "train_seconds": round(time.time() - t_start, 1)}
    save_weights(args.out, res["model"], res["decoder"], vocab, meta, image_mean.numpy())
    report["final"] = res["metrics"]
    (args.report / "train.json").write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps({k: v for k, v in report["final"].items() if k != "examples"}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
