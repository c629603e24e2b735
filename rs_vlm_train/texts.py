"""Every text of the alignment stage (captions, class prompts, box and mosaic sentences,
knowledge-base concepts, background texts), embedded once by the frozen MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rs_vlm_plugin.core.expansion import ExpandedQueries, QueryKnowledge, expand_text
from rs_vlm_plugin.core.knowledge import KnowledgeBase
from rs_vlm_plugin.core.locate.relevance import BACKGROUND_PROMPTS, BACKGROUND_TEXTS
from rs_vlm_plugin.core.qa import subject_prompts

from . import features as feat
from .box_captions import box_sentence, region_windows, window_labels
from .data import VHR10_CLASSES
from .recipe import KNOWLEDGE_BASE


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
