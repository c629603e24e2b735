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

The stages live in their own modules, in the order they run: ``recipe`` (recipes and shared
constants), ``texts``, ``align``, ``locate_stage``, ``evaluation`` and ``variants``; this one
parses the command line and drives them.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from rs_vlm_plugin.modeling.rsvlm import ModelConfig

from . import features as feat
from .classes import group, weak_captions
from .decoder import build_vocab, pretrain_decoder, read_corpus, read_corpus_by_class
from .evaluation import encode_set
from .locate_stage import calibrate_locate, locate_cells, locate_loss
from .recipe import ABLATIONS, DEFAULT_OUT, KNOWLEDGE_BASE, RECIPES, ROUTING_WEIGHT, TIER_WEIGHTS, Recipe
from .texts import Texts
from .variants import DecoderData, run_variant, save_weights, stacking_margin

__all__ = ["main", "locate_cells", "locate_loss"]  # the tests import these from here


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
    parser.add_argument("--anchor-weights", type=Path,
                        help="the fine-GSD anchor's teacher (a weight file), for a recipe with an anchor (v5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=Path("out/train"))
    args = parser.parse_args(argv)
    if RECIPES[args.recipe].anchor > 0 and not args.skip_final and (
            args.anchor_weights is None or not args.anchor_weights.is_file()):
        parser.error(f"recipe {args.recipe} anchors fine-GSD views to a teacher: pass --anchor-weights PATH "
                     "(for example the shipped rs_vlm_plugin/resources/weights/rs_vlm_lite0.npz copied aside)")
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
    if recipe.anchor > 0:
        recipe = dataclasses.replace(recipe, anchor_weights=str(args.anchor_weights))
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
            "recipe": {"name": args.recipe, **recipe.to_dict(),
                       **({"anchor_sha256": hashlib.sha256(Path(recipe.anchor_weights).read_bytes()).hexdigest()}
                          if recipe.anchor > 0 else {})},
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
