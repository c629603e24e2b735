"""The locate stage: the object head taught background cells of VHR-10 crops against the
background texts (and box cells against their class), and the outline threshold calibrated on them."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rs_vlm_plugin.modeling.rsvlm import ImageModel

from .align import TrainingRows, multi_positive_loss, sample_boxes
from .data import VHR10_CLASSES
from .recipe import Recipe
from .texts import Texts


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
