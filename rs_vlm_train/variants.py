"""One variant of the run: alignment (and locate stage), decoder fine-tuning on its paired sets,
evaluation and its log line; the stacking margin read from a leave-classes-out report, and the
trained weights written to one npz."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rs_vlm_plugin.modeling.rsvlm import CaptionDecoder, ImageModel, ModelConfig

from .align import TrainingRows, align
from .decoder import PairedSource, finetune_decoder, generate
from .evaluation import calibrate_presence, encode_set, evaluate_alignment, evaluate_captions, trained_class_names
from .locate_stage import locate_stage
from .metrics import caption_scores
from .recipe import Recipe
from .texts import Texts


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
