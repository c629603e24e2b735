"""MS-VLAM alignment: the contrastive and geometry losses, the image model built over the
knowledge base, the rows each recipe trains on, batch sampling and the alignment loop."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rs_vlm_plugin.modeling.rsvlm import ImageModel, ModelConfig, box_cell_weights, build_backbone

from . import features as feat
from .classes import group
from .recipe import LEVELS, RECIPES, ROUTING_WEIGHT, TIER_WEIGHTS, Recipe
from .seeding import seed_everything
from .texts import Texts


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


def build_image_model(config: ModelConfig, texts: Texts, kb: dict):
    """Trunk (frozen) and image model with the knowledge base embedded by the frozen text tower."""
    trunk, net = build_backbone(config)
    levels = torch.tensor([LEVELS[c["level"]] for c in kb["concepts"]])
    return trunk, ImageModel(config, net, texts.kb_embeddings(), levels)


def anchor_teacher(config: ModelConfig, texts: Texts, kb: dict, weights: str) -> ImageModel:
    """The fine-GSD anchor's teacher: the image side of a trained weight file, frozen (blocks the
    file does not hold stay ImageNet's)."""
    from rs_vlm_plugin.modeling.export import LoadReport, load_state, load_weights

    if not weights:
        raise ValueError("the recipe's anchor needs a teacher: pass --anchor-weights PATH (an rs_vlm_lite0.npz)")
    arrays, _, _ = load_weights(Path(weights))
    _, teacher = build_image_model(config, texts, kb)
    heads = {k for k, p in teacher.named_parameters() if p.requires_grad and not k.startswith("top.blocks.")}
    try:
        load_state(teacher, arrays or {}, "image", heads)
    except LoadReport as e:
        raise ValueError(f"{weights} does not hold a trained image side (the tier heads and fusion): {e}") from e
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def anchor_loss(model: ImageModel, teacher: ImageModel, fine: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance of the global and region tokens of ``model`` from the teacher's."""
    feats = model.features(fine, mid)
    g, _ = model.global_tokens(feats)
    r, _ = model.region_tokens(feats)
    with torch.no_grad():
        t_feats = teacher.features(fine, mid)
        tg, _ = teacher.global_tokens(t_feats)
        tr, _ = teacher.region_tokens(t_feats)  # an eval-mode fusion records no routing
    return (1 - (g * tg).sum(-1)).mean() + (1 - (r * tr).sum(-1)).mean()


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
    anchor = None
    if recipe.anchor > 0 and not recipe.leave_out and "ucm_zoom" in sets:
        anchor = anchor_teacher(config, texts, kb, recipe.anchor_weights)
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
        if anchor is not None:  # the fine-GSD anchor, on zoomed-in UCM views of the classes trained
            z = rng.choice(rows.ucm, min(32, len(rows.ucm)), replace=False)
            fz, mz = sets["ucm_zoom"].take(z, rng.integers(0, sets["ucm_zoom"].fine.shape[1], len(z)))
            losses["anchor"] = anchor_loss(model, anchor, fz, mz)
            total = total + recipe.anchor * losses["anchor"]
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
