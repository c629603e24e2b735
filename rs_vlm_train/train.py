"""Train the RS-VLM model (issue 3) on folders laid out like ``../shared/data``.

Stages, each checkpointed under ``--cache`` so an interrupted run resumes where it stopped:

1. ``features``: frozen trunk outputs of every training view and frozen MiniLM embeddings of
   every text (see ``features.py``).
2. ``align``: MS-VLAM, three contrastive losses weighted and summed: global (UCM image with
   its captions, RESISC12 images with class prompts, mosaics with a composed caption), region
   (each window of a 2x2 / 3x3 mosaic with its own source's text) and object (VHR-10 box
   tokens with the object's phrase).  Trains the backbone's last blocks, the tier heads and
   the knowledge fusion with its experts.
3. ``decoder-pretrain``: the caption decoder, text only, decoding RSICD / RSITMD / Sydney /
   UCM-train captions from their own noised MiniLM embeddings.
4. ``decoder``: the decoder fine-tuned on UCM train images (augmented tokens of all tiers).
5. ``ablations`` (``--ablations``): each tier, the augmentation and the experts switched off
   in turn, with the same short recipe as a reference row, evaluated on the val splits.

    python3 build.py train --data ../shared/data [--ablations]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rs_vlm_plugin.core.decoding import BOS, EOS, PAD, UNK, beam_search, detokenize
from rs_vlm_plugin.core.qa import calibrate_threshold, presence_scores, subject_prompts
from rs_vlm_plugin.modeling.rsvlm import (SPECIAL_TOKENS, CaptionDecoder, ImageModel, ModelConfig, box_cell_weights,
                                          build_backbone, pool_objects)

from . import features as feat
from .data import VHR10_CLASSES
from .metrics import caption_scores, object_retrieval, retrieval_recalls, scene_accuracy

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "rs_vlm_plugin"
DEFAULT_OUT = PACKAGE_ROOT / "resources" / "weights" / "rs_vlm_lite0.npz"
KNOWLEDGE_BASE = PACKAGE_ROOT / "resources" / "knowledge_base.json"
LEVELS = {"object": 0, "region": 1, "scene": 2}
TIER_WEIGHTS = {"global": 1.0, "region": 0.5, "object": 0.5}
ROUTING_WEIGHT = 0.1
ABLATIONS = {
    "full": {},
    "no object tier": {"tier": "object"},
    "no region tier": {"tier": "region"},
    "no global tier": {"tier": "global"},
    "no augmentation": {"augment": False},
    "no experts": {"experts": False},
}


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy generator."""
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def multi_positive_loss(a: torch.Tensor, b: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE in which every pair with the same key is a positive."""
    logits = scale * a @ b.t()
    target = (keys[:, None] == keys[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.t().log_softmax(1), 1).mean())


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
        self.scene_prompts = {c: [self.add(p.format(feat.readable(c))) for p in feat.SCENE_PROMPTS]
                              for c in self.resisc_classes}
        self.ucm_classes = sorted(set(idx["classes"]))
        self.ucm_prompts = {c: [self.add(p.format(feat.readable(c))) for p in feat.SCENE_PROMPTS] for c in self.ucm_classes}
        self.presence_prompts = {c: [self.add(p) for p in subject_prompts(feat.readable(c))] for c in self.ucm_classes}
        self.object_classes = list(VHR10_CLASSES)
        self.object_prompts = {c: [self.add(p.format(c)) for p in feat.OBJECT_PROMPTS] for c in self.object_classes}
        self.mosaic = []
        for m in sets["mosaic"].index["mosaics"]:
            names = [feat.readable(lab) for _, _, lab in m["sources"]]
            self.mosaic.append(self.add("an aerial image of " + ", ".join(names[:-1]) + " and " + names[-1] + "."))
        from rs_vlm_plugin.modeling.export import concept_texts

        self.kb_rows = []
        for concept in kb["concepts"]:
            self.kb_rows.append([self.add(t) for t in concept_texts(concept)])
        self.emb = torch.from_numpy(feat.text_embeddings(self.items, cache, "align"))

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


def align(sets: dict, texts: Texts, kb: dict, config: ModelConfig, cache: Path, tag: str, steps: int, seed: int,
          drop_tier: str | None = None, log_every: int = 100) -> ImageModel:
    """MS-VLAM alignment; resumes from ``cache/align_{tag}.ckpt``."""
    rng = seed_everything(seed)
    _, model = build_image_model(config, texts, kb)
    params = _trainable(model)
    top_ids = {id(p) for p in model.top.parameters()}
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) not in top_ids], "lr": 5e-4},
                             {"params": [p for p in params if id(p) in top_ids], "lr": 1e-4}], weight_decay=0.05)
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

    ucm, resisc, mosaic, vhr = sets["ucm_train"], sets["resisc"], sets["mosaic"], sets["vhr_train"]
    resisc_train = np.flatnonzero(~np.asarray(resisc.index["held_out"]))
    resisc_classes = resisc.index["classes"]
    crops = vhr.index["crops"]
    crops_with_objects = np.asarray([i for i, c in enumerate(crops) if c["objects"]])
    mosaics = mosaic.index["mosaics"]
    weights = {k: (0.0 if k == drop_tier else v) for k, v in TIER_WEIGHTS.items()}
    # Batch: 64 UCM + 32 RESISC + 16 mosaics + 24 VHR crops (fewer when a set is smaller).
    n_ucm, n_res = min(64, len(ucm.index["files"])), min(32, len(resisc_train))
    n_mos, n_obj = min(16, len(mosaics)), min(24, len(crops_with_objects))
    start = time.time()
    running: dict[str, float] = {}
    since = 0
    while step < steps:
        _set_train(model)
        lr_scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * lr_scale
        # ---- sample a batch
        u = rng.choice(len(ucm.index["files"]), n_ucm, replace=False)
        r = rng.choice(resisc_train, n_res, replace=False)
        m = rng.choice(len(mosaics), n_mos, replace=False)
        o = rng.choice(crops_with_objects, n_obj, replace=False)
        fu, mu = ucm.take(u, rng.integers(0, 8, n_ucm))
        fr, mr = resisc.take(r, rng.integers(0, 2, n_res))
        fm, mm = mosaic.take(m, np.zeros(n_mos, int))
        fo, mo = vhr.take(o, np.zeros(n_obj, int))
        fine = torch.cat([fu, fr, fm, fo])
        mid = torch.cat([mu, mr, mm, mo])
        feats = model.features(fine, mid)
        scale = model.logit_scale.exp().clamp(max=100.0)
        losses = {}
        model.fusion.seen.clear()
        # ---- global tier: UCM captions, RESISC prompts, mosaic composed captions
        n_glob = n_ucm + n_res + n_mos
        g_tok, g_gates = model.global_tokens((feats[0][:n_glob], feats[1][:n_glob]))
        tids = [int(rng.choice(texts.ucm_train[i])) for i in u]
        keys = list(tids)
        for i in r:
            c = resisc_classes[i]
            tids.append(int(rng.choice(texts.scene_prompts[c])))
            keys.append(-1 - texts.resisc_classes.index(c))  # all prompts of a class are one positive
        for i in m:
            tids.append(texts.mosaic[i])
            keys.append(texts.mosaic[i])
        if weights["global"] > 0:
            losses["global"] = multi_positive_loss(g_tok, texts.emb[tids], torch.tensor(keys), scale)
        # ---- region tier: each mosaic window with its own source's text
        r_tok, r_gates = model.region_tokens((feats[0][n_ucm + n_res:n_glob], feats[1][n_ucm + n_res:n_glob]))
        reg_tokens, reg_tids, reg_keys = [], [], []
        for k, i in enumerate(m):
            spec = mosaics[i]
            offset = 0 if spec["grid"] == 2 else 4
            for w, (kind, j, label) in enumerate(spec["sources"]):
                reg_tokens.append(r_tok[k, offset + w])
                if kind == "ucm":
                    t = int(rng.choice(texts.ucm_train[j]))
                    reg_tids.append(t)
                    reg_keys.append(t)
                else:
                    reg_tids.append(int(rng.choice(texts.scene_prompts[label])))
                    reg_keys.append(-1 - texts.resisc_classes.index(label))
        if weights["region"] > 0:
            losses["region"] = multi_positive_loss(torch.stack(reg_tokens), texts.emb[reg_tids],
                                                   torch.tensor(reg_keys), scale)
        # ---- object tier: box-pooled object tokens with the object's phrase
        # Only the cells under some box of a crop go through the object head.
        box_w, box_crop, obj_tids, obj_keys = [], [], [], []
        for k, i in enumerate(o):
            objects = crops[i]["objects"]
            for idx in rng.permutation(len(objects))[:4]:
                label, box = objects[idx]
                box_w.append(box_cell_weights(tuple(box), model.grid))
                box_crop.append(k)
                obj_tids.append(int(rng.choice(texts.object_prompts[label])))
                obj_keys.append(texts.object_classes.index(label))
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
        total = sum(weights[k] * v for k, v in losses.items())
        if config.experts and config.augment:
            losses["routing"] = semantic_routing_loss(model.fusion.seen)
            total = total + ROUTING_WEIGHT * losses["routing"]
        model.fusion.seen.clear()
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
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


def evaluate_alignment(model: ImageModel, sets: dict, texts: Texts) -> dict:
    """UCM val retrieval, RESISC12 held-back scene accuracy, VHR-10 held-back object retrieval."""
    val = encode_set(model, sets["ucm_val"], [0])
    img = val["global"][:, 0].numpy()
    txt = texts.emb[[t for rows in texts.ucm_val for t in rows]].numpy()
    out = {"retrieval": retrieval_recalls(img, txt, 5), "routing": val["routing"].tolist()}
    resisc = sets["resisc"]
    held = np.flatnonzero(np.asarray(resisc.index["held_out"]))
    enc = encode_set(model, resisc, [0], held, global_only=True)
    classes = texts.resisc_classes
    class_emb = torch.stack([texts.mean(texts.scene_prompts[c]) for c in classes]).numpy()
    labels = np.asarray([classes.index(resisc.index["classes"][i]) for i in held])
    out["scene_accuracy"] = scene_accuracy(enc["global"][:, 0].numpy(), class_emb, labels)
    out["scene_images"] = int(len(held))
    boxes, box_labels = box_tokens(model, sets["vhr_val"])
    queries = texts.object_classes
    q_emb = torch.stack([texts.mean(texts.object_prompts[c]) for c in queries]).numpy()
    out["objects"] = object_retrieval(boxes, box_labels, q_emb, queries, 10)
    return out


# --------------------------------------------------------------------------- decoder


def read_corpus(data: Path) -> list[str]:
    """Caption text for decoder pre-training: RSICD, RSITMD, Sydney (train+val), normalised."""
    return [s for part in read_corpus_parts(data).values() for s in part]


def read_corpus_parts(data: Path) -> dict[str, list[str]]:
    """The caption text of :func:`read_corpus` by source ("RSICD", "RSITMD", "Sydney"), present ones only."""
    folder = Path(data) / "captions_text"
    parts: dict[str, list[str]] = {}
    for source, name in (("RSICD", "rsicd_train_caps.txt"), ("RSITMD", "rsitmd_train_caps.txt")):
        path = folder / name
        if path.exists():
            parts[source] = [feat.normalise_caption(line) for line in path.read_text(encoding="utf-8").splitlines()
                             if line.strip()]
    path = folder / "sydney_train_val.json"
    if path.exists():
        parts["Sydney"] = [feat.normalise_caption(s["raw"])
                           for im in json.loads(path.read_text(encoding="utf-8"))["images"] for s in im["sentences"]]
    return {k: [s for s in v if s] for k, v in parts.items()}


def build_vocab(sentences: list[str], min_count: int = 3) -> list[str]:
    """Special tokens, then words seen at least ``min_count`` times (most frequent first)."""
    counts = Counter(w for s in sentences for w in s.split())
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return list(SPECIAL_TOKENS) + words


def encode_words(sentences: list[str], vocab: list[str], max_len: int) -> torch.Tensor:
    """(N, max_len + 2) token ids: BOS words EOS, padded."""
    index = {w: i for i, w in enumerate(vocab)}
    out = torch.full((len(sentences), max_len + 2), PAD, dtype=torch.long)
    for k, s in enumerate(sentences):
        ids = [BOS] + [index.get(w, UNK) for w in s.split()[:max_len]] + [EOS]
        out[k, :len(ids)] = torch.tensor(ids)
    return out


def _decoder_update(decoder: CaptionDecoder, opt, memory: torch.Tensor, tokens: torch.Tensor) -> float:
    """One teacher-forced optimisation step on a padded token batch; returns the loss."""
    tokens = tokens[:, : int((tokens != PAD).sum(1).max())]
    logits = decoder(memory, tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=PAD,
                           label_smoothing=0.1)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def noised_global_memory(noise: float = 0.08):
    """Memory builder of text-only pre-training: each text embedding, noised (per-sentence level drawn
    uniformly up to 1.5 x ``noise`` per dimension) and renormalised, as the only (global) token."""

    def memory(decoder: CaptionDecoder, emb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        sigma = noise * torch.rand(len(emb), 1, generator=gen) * 1.5
        noised = F.normalize(emb + sigma * torch.randn(len(emb), emb.shape[1], generator=gen), dim=-1)
        return decoder.memory(noised, None, None)

    return memory


def pretrain_decoder(config: ModelConfig, corpus: list[str], corpus_emb: torch.Tensor, vocab: list[str], cache: Path,
                     epochs: int, seed: int, noise: float = 0.08, memory=None, tag: str = "decoder_pretrain",
                     batch_size: int = 128, lr: float = 5e-4, warmup: int = 200, on_epoch=None) -> CaptionDecoder:
    """Text-only training: decode captions from decoder memory built from their own text embeddings.

    Checkpointed after every epoch (``cache/{tag}.ckpt``) and resumed from there; the final
    weights are ``cache/{tag}.pt`` (returned as they are when present).

    Args:
        memory: ``(decoder, embeddings (B, D), generator) -> memory``; default
            :func:`noised_global_memory` (``noise``).
        on_epoch: Called with the number of finished epochs after each checkpoint.
    """
    final, ckpt = cache / f"{tag}.pt", cache / f"{tag}.ckpt"
    label = tag.replace("_", "-")  # as logs have always read: "[decoder-pretrain] ..."
    memory = memory or noised_global_memory(noise)
    seed_everything(seed)
    decoder = CaptionDecoder(config)
    if final.exists():
        decoder.load_state_dict(torch.load(final, weights_only=True))
        return decoder
    tokens = encode_words(corpus, vocab, config.max_caption_tokens)
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0.01)
    n = len(corpus)
    batch = min(batch_size, n)
    total_steps = max(1, epochs * (n // batch))
    step = 0
    first_epoch = 0
    start = time.time()
    gen = torch.Generator().manual_seed(seed)
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        if state["epochs"] == epochs and state["sentences"] == n:
            decoder.load_state_dict(state["decoder"])
            opt.load_state_dict(state["opt"])
            first_epoch, step = state["epoch"], state["step"]
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])
            print(f"[{label}] resuming after epoch {first_epoch}/{epochs}", flush=True)
    for epoch in range(first_epoch, epochs):
        decoder.train()
        perm = torch.randperm(n, generator=gen)
        run = 0.0
        for k in range(0, n - batch + 1, batch):
            rows = perm[k:k + batch]
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            loss = _decoder_update(decoder, opt, memory(decoder, corpus_emb[rows], gen), tokens[rows])
            step += 1
            run += loss
            if step % 50 == 0:
                print(f"[{label}] step {step}/{total_steps} loss {loss:.3f} ({time.time() - start:.0f} s)", flush=True)
        print(f"[{label}] epoch {epoch + 1}/{epochs} loss {run / max(1, n // batch):.3f} "
              f"({time.time() - start:.0f} s)", flush=True)
        torch.save({"decoder": decoder.state_dict(), "opt": opt.state_dict(), "epoch": epoch + 1, "step": step,
                    "epochs": epochs, "sentences": n, "gen": gen.get_state(), "torch_rng": torch.get_rng_state()},
                   ckpt)
        if on_epoch is not None:
            on_epoch(epoch + 1)
    torch.save(decoder.state_dict(), final)
    ckpt.unlink(missing_ok=True)
    return decoder


def finetune_decoder(decoder: CaptionDecoder, tokens_cache: dict, sentences: list[list[str]], vocab: list[str],
                     config: ModelConfig, epochs: int, seed: int, drop_tier: str | None = None) -> CaptionDecoder:
    """Fine-tune on UCM train: every (image, caption) pair once per epoch, a random view each."""
    seed_everything(seed)
    decoder = copy.deepcopy(decoder)
    pairs = [(i, s) for i, sents in enumerate(sentences) for s in sents]
    tokens = encode_words([feat.normalise_caption(s) for _, s in pairs], vocab, config.max_caption_tokens)
    owners = torch.tensor([i for i, _ in pairs])
    n_views = tokens_cache["global"].shape[1]
    opt = torch.optim.AdamW(decoder.parameters(), lr=3e-4, weight_decay=0.01)
    batch = min(64, len(pairs))
    total = max(1, epochs * (len(pairs) // batch))
    gen = torch.Generator().manual_seed(seed)
    step = 0
    start = time.time()
    for epoch in range(epochs):
        decoder.train()
        perm = torch.randperm(len(pairs), generator=gen)
        run = 0.0
        for k in range(0, len(pairs) - batch + 1, batch):
            rows = perm[k:k + batch]
            for g in opt.param_groups:
                g["lr"] = 3e-4 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / total))
            img = owners[rows]
            v = torch.randint(0, n_views, (len(rows),), generator=gen)
            memory = memory_of(decoder, tokens_cache, img, v, drop_tier)
            run += _decoder_update(decoder, opt, memory, tokens[rows])
            step += 1
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"[decoder] epoch {epoch + 1}/{epochs} loss {run / max(1, len(pairs) // batch):.3f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    return decoder.eval()


def memory_of(decoder: CaptionDecoder, cache: dict, img: torch.Tensor, view: torch.Tensor,
              drop_tier: str | None = None) -> torch.Tensor:
    """Decoder memory of cached tokens, without the tier an ablation switches off."""
    g = cache["global"][img, view].float()
    r = None if drop_tier == "region" else cache["regions"][img, view].float()
    o = None if drop_tier == "object" else cache["objects"][img, view].float()
    if drop_tier == "global":
        g = torch.zeros_like(g)
    return decoder.memory(g, r, o)


@torch.no_grad()
def generate(decoder: CaptionDecoder, cache: dict, vocab: list[str], beam: int = 3, drop_tier: str | None = None,
             max_len: int = 24) -> list[str]:
    """Beam-search captions of every image of a token cache (view 0)."""
    decoder.eval()
    n = cache["global"].shape[0]
    out = []
    for k in range(0, n, 32):
        img = torch.arange(k, min(n, k + 32))
        memory = memory_of(decoder, cache, img, torch.zeros(len(img), dtype=torch.long), drop_tier)

        def step(rows, prefix, memory=memory):
            return decoder(memory[torch.from_numpy(rows)], torch.from_numpy(prefix))[:, -1].numpy()

        out += [detokenize(seq, vocab) for seq in beam_search(step, len(img), beam=beam, max_len=max_len)]
    return out


# --------------------------------------------------------------------------- the run


def run_variant(name: str, switches: dict, data: Path, sets: dict, texts: Texts, kb: dict, base: ModelConfig,
                cache: Path, steps: int, dec_pre: CaptionDecoder, vocab: list[str], dec_epochs: int, seed: int,
                n_views: int, meteor: bool) -> dict:
    """Train one variant (alignment + decoder fine-tuning) and evaluate it on the val splits."""
    config = copy.deepcopy(base)
    drop = switches.get("tier")
    config.augment = switches.get("augment", True)
    config.experts = switches.get("experts", True)
    if drop:
        config.tiers = {**config.tiers, drop: False}
    tag = name.replace(" ", "_") + f"_{steps}"
    t0 = time.time()
    model = align(sets, texts, kb, config, cache, tag, steps, seed, drop_tier=drop)
    align_s = time.time() - t0
    metrics = evaluate_alignment(model, sets, texts)
    dec_path = cache / f"decoder_{tag}_{dec_epochs}x{n_views}.pt"
    if dec_path.exists():
        decoder = CaptionDecoder(dec_pre.config)
        decoder.load_state_dict(torch.load(dec_path, weights_only=True))
        decoder.eval()
    else:
        train_cache = encode_set(model, sets["ucm_train"], list(range(n_views)))
        decoder = finetune_decoder(dec_pre, train_cache, sets["ucm_train"].index["sentences"], vocab, config,
                                   dec_epochs, seed, drop)
        del train_cache
        torch.save(decoder.state_dict(), dec_path)
    val_cache = encode_set(model, sets["ucm_val"], [0])
    hyps = generate(decoder, val_cache, vocab, drop_tier=drop)
    refs = sets["ucm_val"].index["sentences"]
    metrics["captioning"] = caption_scores({str(i): r for i, r in enumerate(refs)},
                                           {str(i): h for i, h in enumerate(hyps)}, meteor=meteor)
    metrics["examples"] = [{"file": sets["ucm_val"].index["files"][i], "caption": hyps[i], "reference": refs[i][0]}
                           for i in range(0, len(hyps), 30)]
    metrics["qa"] = calibrate_presence(val_cache, sets["ucm_val"].index["classes"], texts,
                                       float(model.logit_scale.exp()))
    metrics["seconds"] = round(time.time() - t0, 1)
    metrics["align_seconds"] = round(align_s, 1)
    print(f"[{name}] mR {metrics['retrieval']['mR']:.1f} scene {metrics['scene_accuracy']:.1f} "
          f"obj P@10 {metrics['objects']['p@10']:.1f} BLEU-4 {metrics['captioning']['BLEU-4']:.3f} "
          f"CIDEr {metrics['captioning']['CIDEr']:.3f}", flush=True)
    return {"config": config.to_dict(), "metrics": metrics, "model": model, "decoder": decoder}


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
    parser.add_argument("--ablations", action="store_true", help="also train and evaluate the ablation variants")
    parser.add_argument("--ablation-steps", type=int, default=150)
    parser.add_argument("--ablation-decoder-epochs", type=int, default=3)
    parser.add_argument("--mosaics", type=int, default=4000, help="2x2 and 3x3 mosaics built for the region tier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=Path("out/train"))
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.time()
    base = ModelConfig()
    kb = json.loads(KNOWLEDGE_BASE.read_text(encoding="utf-8"))
    print("stage features", flush=True)
    sets = feat.build_all(args.data, args.cache, base, n_mosaics=args.mosaics, seed=args.seed)
    texts = Texts(sets, kb, args.cache)
    print(f"{len(texts.items)} alignment texts", flush=True)

    print("stage decoder-pretrain", flush=True)
    ucm_sents = [feat.normalise_caption(s) for sents in sets["ucm_train"].index["sentences"] for s in sents]
    corpus = read_corpus(args.data) + ucm_sents
    vocab = build_vocab(corpus)
    base.vocab_size = len(vocab)
    unique = sorted(set(corpus))
    corpus_emb = torch.from_numpy(feat.text_embeddings(unique, args.cache, "corpus"))
    print(f"decoder corpus {len(corpus)} sentences ({len(unique)} distinct), vocabulary {len(vocab)}", flush=True)
    dec_pre = pretrain_decoder(base, unique, corpus_emb, vocab, args.cache, args.pretrain_epochs, args.seed)

    args.report.mkdir(parents=True, exist_ok=True)
    report = {"seed": args.seed}
    print("stage align + decoder (final model)", flush=True)
    res = run_variant("final", {}, args.data, sets, texts, kb, base, args.cache, args.steps, dec_pre, vocab,
                      args.decoder_epochs, args.seed, args.decoder_views, meteor=True)
    with torch.no_grad():  # a concept's mean similarity to training images becomes its ranking bias
        image_mean = encode_set(res["model"], sets["ucm_train"], [0], global_only=True)["global"][:, 0].mean(0)
    meta = {"config": res["config"], "seed": args.seed, "qa": res["metrics"]["qa"], "align_steps": args.steps,
            "pretrain_epochs": args.pretrain_epochs, "decoder_epochs": args.decoder_epochs,
            "decoder_views": args.decoder_views, "tier_weights": TIER_WEIGHTS, "routing_weight": ROUTING_WEIGHT,
            "logit_scale": float(res["model"].logit_scale.exp()),
            "val": {k: v for k, v in res["metrics"].items() if k != "examples"},
            "data": ["UCM train (captions)", "RESISC12 train minus 20% held back (class prompts)",
                     "mosaics of both", "VHR-10 minus 20% held back (boxes)",
                     "RSICD/RSITMD/Sydney caption text (decoder pre-training)"],
            "train_seconds": round(time.time() - t_start, 1)}
    save_weights(args.out, res["model"], res["decoder"], vocab, meta, image_mean.numpy())
    report["final"] = res["metrics"]
    (args.report / "train.json").write_text(json.dumps(report, indent=2, default=float))
    if args.ablations:
        rows = {}
        for name, switches in ABLATIONS.items():
            print(f"stage ablation: {name}", flush=True)
            res = run_variant(name, switches, args.data, sets, texts, kb, base, args.cache, args.ablation_steps, dec_pre,
                              vocab, args.ablation_decoder_epochs, args.seed, 2, meteor=False)
            rows[name] = res["metrics"]
        report["ablations"] = {"steps": args.ablation_steps, "decoder_epochs": args.ablation_decoder_epochs,
                               "decoder_views": 2, "rows": rows}
        (args.report / "ablations.json").write_text(json.dumps(report["ablations"], indent=2, default=float))

    print(json.dumps({k: v for k, v in report["final"].items() if k != "examples"}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
