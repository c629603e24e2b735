"""Evaluate an ONNX bundle on folders laid out like ``../shared/data`` (or any such folder).

    python3 build.py eval --data ../shared/data        everything below on the shared val splits
    python3 build.py eval --captions DIR --split NAME   captioning and retrieval on any captions folder
    python3 build.py eval --scenes DIR                  zero-shot scenes on any class-per-folder set
    python3 build.py eval --objects DIR                 text-to-box retrieval on any VHR-10-like folder

``--captions DIR --split NAME``: a ``captions.json`` with ``images: [{filename, class, split,
sentences}]`` and the images beside it.  Captions are decoded (beam search) and scored with
pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr); image<->text retrieval R@1/5/10 both
directions and mean recall, every sentence kept (no deduplication).
``--scenes DIR``: one sub-folder of images per class; zero-shot accuracy, class names from the
folder names (underscores as spaces), a prompt ensemble per class.
``--objects DIR``: ``images/NNN.jpg`` and ``boxes/NNN.txt``; a square crop around each box
(three times its size) is encoded, the object tokens under the box are pooled, and each class
name queries all boxes: precision of the 10 best (p@10), hit@10 and mAP.
``--data DIR``: UCM val, the held-back 20 % of RESISC12 train and of VHR-10 (the same hashed
split training held back), AID val (10 % by name hash, its 30 class names), plus the ablation table that training wrote (``out/train``).

Writes a JSON and a Markdown table with the published numbers of ANCHORS beside ours.  The
model runs on onnxruntime only; torch is not needed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from rs_vlm_plugin.core.bundle import ModelBundle, default_bundle_dir
from rs_vlm_plugin.core.expansion import expand_queries
from rs_vlm_plugin.core.jobs.classify import CLASS_PROMPTS as SCENE_PROMPTS
from rs_vlm_plugin.core.jobs.classify import class_embeddings
from rs_vlm_plugin.core.seen_bias import seen_bias_offsets
from rs_vlm_plugin.core.jobs.grounding import grounded_captions, top_k_of

from .classes import readable, truthfulness

from .data import OBJECT_PROMPTS, held_out, load_image, read_captions, read_object_boxes, read_scene_folders
from .metrics import caption_scores, object_retrieval, retrieval_recalls
HELD_OUT_FRACTION = 0.2  # as rs_vlm_train.features: the same images are held back from training

# Published results (../shared/ANCHORS.md), scores x100.
ANCHORS_CAPTIONING = {
    "SAA (Lu 2020)": {"BLEU-1": 79.62, "BLEU-4": 64.77, "METEOR": 38.59, "ROUGE-L": 69.42, "CIDEr": 294.51},
    "Post-processing (Hoxha 2023)": {"BLEU-1": 79.73, "BLEU-4": 62.62, "METEOR": 40.80, "ROUGE-L": 74.06, "CIDEr": 309.64},
    "RSGPT": {"BLEU-1": 86.12, "BLEU-4": 65.74, "METEOR": 42.21, "ROUGE-L": 78.34, "CIDEr": 333.23},
    "SkyEyeGPT": {"BLEU-1": 90.71, "BLEU-4": 78.41, "METEOR": 46.24, "ROUGE-L": 79.49, "CIDEr": 236.75},
}
ANCHORS_RETRIEVAL = {
    "RemoteCLIP ViT-B/32 (UCM test)": [20.48, 59.85, 83.33, 18.67, 61.52, 94.29, 56.36],
    "CLIP-CL ViT-B/32 fine-tuned (UCM test)": [20.00, 55.24, 80.95, 18.19, 64.86, 92.38, 55.27],
}
CAPTION_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
RETRIEVAL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")


def _tiles(bundle: ModelBundle, images: list[Image.Image]) -> np.ndarray:
    size = bundle.image_size
    return np.stack([np.asarray(im.resize((size, size), Image.BILINEAR)) for im in images])


def encode_files(bundle: ModelBundle, paths: list[Path], batch: int = 32) -> dict[str, np.ndarray]:
    """All tiers of whole images resized to the model's input size."""
    parts = []
    for start in range(0, len(paths), batch):
        parts.append(bundle.encode_tiers(_tiles(bundle, [load_image(p) for p in paths[start:start + batch]]),
                                         batch_size=batch))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def eval_captions(bundle: ModelBundle, folder: Path, split: str, meteor: bool = True) -> dict:
    """Captioning and retrieval on one split of a captions folder."""
    items = read_captions(folder, split)
    if not items:
        raise SystemExit(f"No images of split {split!r} in {folder / 'captions.json'}.")
    per_image = {len(i.sentences) for i in items}
    if len(per_image) != 1:
        raise SystemExit(f"Every image needs the same number of captions; found {sorted(per_image)}.")
    tiers = encode_files(bundle, [i.path for i in items])
    txt = bundle.encode_texts([s for i in items for s in i.sentences])
    out = {"images": len(items), "captions": len(txt), **retrieval_recalls(tiers["embedding"], txt, per_image.pop())}
    if bundle.has_decoder:
        t0 = time.perf_counter()
        hyps = grounded_captions(bundle, tiers)  # what users get (jobs.grounding)
        out["grounding_top_k"] = top_k_of(bundle)
        out["decode_seconds"] = round(time.perf_counter() - t0, 1)
        scores = caption_scores({str(k): i.sentences for k, i in enumerate(items)},
                                {str(k): h for k, h in enumerate(hyps)}, meteor=meteor)
        out["captioning"] = scores
        out["examples"] = [{"image": str(items[k].path.name), "caption": hyps[k], "reference": items[k].sentences[0]}
                           for k in range(0, len(items), max(1, len(items) // 8))]
    return out


def eval_scenes(bundle: ModelBundle, folder: Path, only: set[str] | None = None, truthful: bool = False,
                source: str = "resisc", label_of=None) -> dict:
    """Zero-shot scene classification with a prompt ensemble per class (optionally on some files only),
    without and with query-time knowledge (the bundle's calibrated combination); with ``truthful``, also
    the share of decoded captions that name the image's class (:mod:`classes`).

    Args:
        source: The dataset the labels belong to (:func:`classes.group`), for truthfulness.
        label_of: An image path's class label (default: its folder's name); AID's is its file
            name's prefix ("bareland_12.jpg" -> "bareland").
    """
    pairs = [(p, label_of(p) if label_of else c) for p, c in read_scene_folders(folder)
             if only is None or p.name in only]
    classes = sorted({c for _, c in pairs})
    names = [readable(c) for c in classes]
    tiers = encode_files(bundle, [p for p, _ in pairs])
    img = tiers["embedding"]
    truth = np.asarray([classes.index(c) for _, c in pairs])
    out = {"images": len(pairs), "classes": len(classes)}
    for key, knowledge, stacked in (("", False, False), ("_knowledge", True, False), ("_stacked", False, True)):
        offsets = seen_bias_offsets(bundle, names, SCENE_PROMPTS, stacked)
        pred = np.argmax(expand_queries(bundle, names, SCENE_PROMPTS, knowledge=knowledge).scores(img) + offsets,
                         axis=1)
        out[f"accuracy{key}"] = float(np.mean(pred == truth))
        out[f"per_class{key}"] = {c: float(np.mean(pred[truth == k] == k)) for k, c in enumerate(classes)}
    if truthful and bundle.has_decoder:
        captions = grounded_captions(bundle, tiers)
        out["truthfulness"] = truthfulness(captions, [c for _, c in pairs], source)
        out["truthfulness"]["examples"] = [{"image": pairs[k][0].name, "caption": captions[k]}
                                           for k in range(0, len(pairs), max(1, len(pairs) // 12))]
    return out


def box_weights(box: tuple[float, float, float, float], grid: int) -> np.ndarray:
    """(grid*grid,) area weights of the fine cells under a box in tile fractions (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (v * grid for v in box)
    edges = np.arange(grid)
    fx = np.clip(np.minimum(edges + 1, x1) - np.maximum(edges, x0), 0, None)
    fy = np.clip(np.minimum(edges + 1, y1) - np.maximum(edges, y0), 0, None)
    w = np.outer(fy, fx)
    if w.sum() <= 0:
        w[min(grid - 1, int((y0 + y1) / 2)), min(grid - 1, int((x0 + x1) / 2))] = 1.0
    return (w / w.sum()).ravel()


def eval_objects(bundle: ModelBundle, folder: Path, only: set[str] | None = None, batch: int = 32) -> dict:
    """Text-to-box retrieval: every box pooled from the object tokens of a crop around it."""
    boxes = [b for b in read_object_boxes(folder) if only is None or b.image.name in only]
    if not boxes:
        raise SystemExit(f"No boxes in {folder / 'boxes'}.")
    grid = int(bundle.manifest["image_encoder"].get("grid", bundle.image_size // 16))
    size = bundle.image_size
    embs, labels = [], []
    crops, fractions = [], []
    current, image = None, None

    def flush():
        tiers = bundle.encode_tiers(np.stack(crops), batch_size=len(crops))
        for objects, frac in zip(tiers["objects"], fractions):
            v = box_weights(frac, grid) @ objects
            embs.append(v / np.linalg.norm(v))
        crops.clear()
        fractions.clear()

    for b in boxes:
        if b.image != current:
            current, image = b.image, load_image(b.image)
        width, height = image.size
        side = int(min(min(width, height), max(96, 3 * max(b.x2 - b.x1, b.y2 - b.y1))))
        x0 = int(min(max(0, (b.x1 + b.x2) / 2 - side / 2), width - side))
        y0 = int(min(max(0, (b.y1 + b.y2) / 2 - side / 2), height - side))
        crops.append(np.asarray(image.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))))
        fractions.append((max(0.0, (b.x1 - x0) / side), max(0.0, (b.y1 - y0) / side),
                          min(1.0, (b.x2 - x0) / side), min(1.0, (b.y2 - y0) / side)))
        labels.append(b.label)
        if len(crops) == batch:
            flush()
    if crops:
        flush()
    queries = sorted(set(labels))
    q_emb = class_embeddings(bundle, queries, OBJECT_PROMPTS)
    return {"images": len({b.image for b in boxes}), **object_retrieval(np.stack(embs), labels, q_emb, queries, 10)}


def _row(values) -> str:
    return "| " + " | ".join(values) + " |"


LCO_COLUMNS = ("unseen acc.", "seen acc.", "H", "unseen acc. + knowledge", "H + knowledge", "stacking gamma",
               "unseen acc. + stacking", "seen acc. + stacking", "H + stacking", "RESISC12 unseen + stacking",
               "RESISC12 H + stacking", "truthful RESISC12", "truthful unseen", "UCM mR", "RESISC12 acc.",
               "VHR-10 P@10", "BLEU-4", "CIDEr")


def lco_cells(m: dict) -> list[str]:
    """A training-time result's cells under :data:`LCO_COLUMNS` (GZSL: mean of UCM val and RESISC12 held-back)."""
    gz, gk = m["gzsl"]["mean"], m["gzsl_knowledge"]["mean"]
    if "gzsl_stacked" in m:
        st, sr = m["gzsl_stacked"]["mean"], m["gzsl_stacked"]["resisc_held_back"]
        stacked = [f"{m['seen_bias']['gamma']:.2f}", f"{st['unseen']:.1f}", f"{st['seen']:.1f}", f"{st['H']:.1f}",
                   f"{sr['unseen']:.1f}", f"{sr['H']:.1f}"]
    else:
        stacked = ["-"] * 6
    truthful, captions = ["-"] * 2, ["-"] * 2  # image-space ablations train no decoder
    if "truthfulness" in m:
        t = m["truthfulness"]
        truthful = [f"{t['resisc_held_back']['truthful']:.1f}", f"{t['unseen']['truthful']:.1f}"]
        captions = [f"{100 * m['captioning']['BLEU-4']:.2f}", f"{100 * m['captioning']['CIDEr']:.1f}"]
    return [f"{gz['unseen']:.1f}", f"{gz['seen']:.1f}", f"{gz['H']:.1f}", f"{gk['unseen']:.1f}", f"{gk['H']:.1f}",
            *stacked, *truthful, f"{m['retrieval']['mR']:.1f}", f"{m['scene_accuracy']:.1f}",
            f"{m['objects']['p@10']:.1f}", *captions]


def open_vocabulary_markdown(ov: dict) -> list[str]:
    """The leave-classes-out table (training-time evaluation, ``out/train/open_vocabulary.json``)."""
    choice = ov["leave_out"]
    lines = [f"## Leave-classes-out (generalised zero-shot; {ov['steps']} alignment steps, seed {choice['seed']})", "",
             f"Left out of every training signal: UCM {', '.join(choice['ucm'])}; RESISC12 {', '.join(choice['resisc'])} "
             f"(groups {', '.join(choice['groups'])}). Accuracy is the mean per-class accuracy among *all* classes of "
             "the split, averaged over UCM val (21 classes) and RESISC12 held-back (12 classes); H is the harmonic "
             "mean of seen and unseen. *Stacking*: calibrated stacking (core/seen_bias.py), each class's score less "
             "gamma times its familiarity to the trained classes, gamma chosen on UCM val's H; the RESISC12 columns "
             "are the split gamma was not chosen on.", "", _row(["recipe", *LCO_COLUMNS]),
             _row(["---"] * (len(LCO_COLUMNS) + 1))]
    lines += [_row([name, *lco_cells(m)]) for name, m in ov["rows"].items()]
    for name, m in ov["rows"].items():
        per = {**m["gzsl"]["ucm_val"]["per_class"], **m["gzsl"]["resisc_held_back"]["per_class"]}
        unseen = m["gzsl"]["ucm_val"]["unseen_classes"] + m["gzsl"]["resisc_held_back"]["unseen_classes"]
        lines.append(f"- {name}, unseen classes: " + ", ".join(f"{c} {per[c]:.0f} %" for c in unseen))
    return lines + [""]


def markdown(report: dict) -> str:
    """The report as Markdown tables, with the published anchors beside ours."""
    lines = [f"# Evaluation of {report['model']}", ""]
    if "captions" in report:
        r = report["captions"]
        title = f"{r['folder']} split {r['split']} ({r['images']} images, {r['captions']} captions)"
        if "captioning" in r:
            lines += [f"## Captioning: {title}", "", "Scores x100 (pycocoevalcap).", "",
                      _row(["model", *CAPTION_KEYS]), _row(["---"] * (len(CAPTION_KEYS) + 1)),
                      _row([f"**{report['model']}** (val)", *(f"{100 * r['captioning'][k]:.2f}" if k in r["captioning"]
                                                             else "-" for k in CAPTION_KEYS)])]
            for name, a in ANCHORS_CAPTIONING.items():
                lines.append(_row([f"{name} (test, published)", *(f"{a[k]:.2f}" if k in a else "-" for k in CAPTION_KEYS)]))
            lines += [""]
            for ex in r.get("examples", [])[:6]:
                lines.append(f"- `{ex['image']}`: \"{ex['caption']}\" (a reference: \"{ex['reference']}\")")
            lines.append("")
        lines += [f"## Retrieval: {title}", "", _row(["model", "I2T R@1", "R@5", "R@10", "T2I R@1", "R@5", "R@10", "mR"]),
                  _row(["---"] * 8), _row([f"**{report['model']}** (val)", *(f"{r[k]:.2f}" for k in RETRIEVAL_KEYS)])]
        for name, a in ANCHORS_RETRIEVAL.items():
            lines.append(_row([f"{name}, published", *(f"{v:.2f}" for v in a)]))
        lines.append("")
    for key in ("scenes", "aid"):
        if key not in report:
            continue
        r = report[key]
        lines += [f"## Zero-shot scenes: {r['folder']} ({r['images']} images, {r['classes']} classes)", "",
                  f"Accuracy: {100 * r['accuracy']:.2f} % with the class prompts; "
                  f"{100 * r['accuracy_knowledge']:.2f} % with query-time knowledge; "
                  f"{100 * r.get('accuracy_stacked', r['accuracy']):.2f} % with the bundle's calibrated stacking "
                  "(which changes nothing where every class is a training class).", "",
                  "| class | accuracy | with knowledge |" + (" caption truthful |" if "truthfulness" in r else ""),
                  "|---|---|---|" + ("---|" if "truthfulness" in r else "")]
        for c, a in r["per_class"].items():
            t = f" {r['truthfulness']['per_class'][c]:.1f} |" if "truthfulness" in r else ""
            lines.append(f"| {c} | {100 * a:.1f} | {100 * r['per_class_knowledge'][c]:.1f} |{t}")
        lines.append("")
        if "truthfulness" in r:
            lines += [f"Caption truthfulness (the decoded caption names the class or a knowledge-base synonym): "
                      f"**{r['truthfulness']['truthful']:.1f} %** of {r['truthfulness']['images']} images.", ""]
            lines += [f"- `{ex['image']}`: \"{ex['caption']}\"" for ex in r["truthfulness"]["examples"][:12]]
            lines.append("")
    if "open_vocabulary" in report:
        lines += open_vocabulary_markdown(report["open_vocabulary"])
    if "grounding" in report:
        lines += grounding_markdown(report["grounding"])
    if "objects" in report:
        r = report["objects"]
        lines += [f"## Text-to-box retrieval: {r['folder']} ({r['boxes']} boxes in {r['images']} images, "
                  f"{r['queries']} class queries)", "", "| P@10 | hit@10 | mAP |", "|---|---|---|",
                  f"| {r['p@10']:.1f} | {r['hit@10']:.1f} | {r['mAP']:.1f} |", ""]
    if "ablations" in report:
        a = report["ablations"]
        lines += [f"## Ablations (training-time evaluation on the val splits; {a['steps']} alignment steps, "
                  f"{a['decoder_epochs']} decoder epochs on {a['decoder_views']} views each, seed 0)", "",
                  _row(["variant", *LCO_COLUMNS]), _row(["---"] * (len(LCO_COLUMNS) + 1))]
        for name, m in a["rows"].items():
            lines.append(_row([name, *lco_cells(m)]))
        lines.append("")
    if "routing" in report:
        lines += ["## Expert routing (mean router weight of each expert, per tier, UCM val images)", "",
                  _row(["tier", "object expert", "region expert", "scene expert"]), _row(["---"] * 4)]
        for tier, w in report["routing"].items():
            lines.append(_row([tier, *(f"{v:.3f}" for v in w)]))
        lines.append("")
    return "\n".join(lines) + "\n"


def grounding_markdown(g: dict) -> list[str]:
    """The grounding cuts as a table (:mod:`grounding_eval`)."""
    lines = ["## Caption grounding: things named that no reference names", "",
             f"Cut chosen on these splits: top {g['chosen_top_k']}; the bundle ships top {g['shipped_top_k']} "
             "(0: grounding off).", "",
             _row(["split", "top k", "reference things kept", "unsupported things", "captions with one", "BLEU-4"]),
             _row(["---"] * 6)]
    for split in ("ucm", "aid"):
        for k, r in g.get(split, {}).get("cuts", {}).items():
            lines.append(_row([split, k, f"{r['reference_things_kept']:.1f} %", f"{r['unsupported_things']:.1f} %",
                               f"{r['captions_with_unsupported']:.1f} %",
                               f"{100 * r['BLEU-4']:.2f}" if "BLEU-4" in r else "-"]))
    return lines + [""]


def grounding_report(bundle: ModelBundle, captions: Path, split: str, data: Path | None) -> dict:
    """Caption-grounding cuts on the caption split and on AID val (its RSICD sentences)."""
    from .grounding_eval import choose_cut, eval_grounding

    items = read_captions(captions, split)
    out = {"ucm": eval_grounding(bundle, encode_files(bundle, [i.path for i in items]), [i.sentences for i in items])}
    if data is not None and (data / "aid" / "images").exists():
        from .aid import aid_held_out, read_aid

        every = read_aid(data)
        val = aid_held_out(every)
        aid = [a for a in every if a.path.name in val and a.sentences]
        out["aid"] = eval_grounding(bundle, encode_files(bundle, [a.path for a in aid]), [a.sentences for a in aid],
                                    bleu=False)
    both = {k: {"reference_things_kept": min(r["reference_things_kept"] for r in (v["cuts"][k] for v in out.values())),
                "unsupported_things": float(np.mean([v["cuts"][k]["unsupported_things"] for v in out.values()]))}
            for k in out["ucm"]["cuts"]}
    out["chosen_top_k"] = choose_cut(both)
    out["shipped_top_k"] = top_k_of(bundle)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="bundle folder (default: the bundled model)")
    parser.add_argument("--data", type=Path, help="a folder laid out like ../shared/data: evaluate everything")
    parser.add_argument("--captions", type=Path, help="folder with captions.json and its images")
    parser.add_argument("--split", default="val")
    parser.add_argument("--scenes", type=Path, help="folder with one sub-folder of images per class")
    parser.add_argument("--objects", type=Path, help="folder with images/ and boxes/ (VHR-10 layout)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it needs Java)")
    parser.add_argument("--ablations", type=Path, default=Path("out/train/ablations.json"),
                        help="ablation results written by `build.py train --ablations`")
    parser.add_argument("--open-vocabulary", type=Path, default=Path("out/train/open_vocabulary.json"),
                        help="leave-classes-out results written by `build.py train --leave-out`")
    parser.add_argument("--out", type=Path, default=Path("out/eval"))
    parser.add_argument("--grounding", action="store_true",
                        help="compare caption-grounding cuts on UCM val and AID val (rs_vlm_train.grounding_eval)")
    args = parser.parse_args(argv)
    if not (args.data or args.captions or args.scenes or args.objects):
        parser.error("give --data DIR, or --captions DIR, --scenes DIR and/or --objects DIR")
    bundle = ModelBundle.load(args.model or default_bundle_dir())
    report: dict = {"model": bundle.name}
    start = time.perf_counter()
    captions, scenes, objects = args.captions, args.scenes, args.objects
    scene_only = object_only = None
    if args.data:
        captions = captions or args.data / "ucm"
        if scenes is None and (args.data / "resisc12" / "train").exists():
            scenes = args.data / "resisc12" / "train"
            scene_only = held_out([p.name for p, _ in read_scene_folders(scenes)], HELD_OUT_FRACTION)
        if objects is None and (args.data / "vhr10").exists():
            objects = args.data / "vhr10"
            object_only = held_out(sorted({b.image.name for b in read_object_boxes(objects)}), HELD_OUT_FRACTION)
    if captions:
        report["captions"] = {"folder": str(captions), "split": args.split,
                              **eval_captions(bundle, captions, args.split, meteor=not args.no_meteor)}
        tiers = encode_files(bundle, [i.path for i in read_captions(captions, args.split)])
        report["routing"] = {tier: [float(v) for v in tiers["routing"][:, k].mean(0)]
                             for k, tier in enumerate(("global token", "region tokens", "object tokens"))}
    if scenes:
        report["scenes"] = {"folder": str(scenes) + (" (held-back 20 %)" if scene_only else ""),
                            **eval_scenes(bundle, scenes, scene_only, truthful=bool(args.data))}
    if args.data and (args.data / "aid" / "images").exists():
        from .aid import aid_held_out, read_aid

        aid_val = aid_held_out(read_aid(args.data))
        report["aid"] = {"folder": str(args.data / "aid" / "images") + " (val: 10 % by name hash)",
                         **eval_scenes(bundle, args.data / "aid" / "images", aid_val, truthful=True, source="aid",
                                       label_of=lambda p: p.stem.lower().rsplit("_", 1)[0])}
    if args.grounding and captions:
        report["grounding"] = grounding_report(bundle, captions, args.split, args.data)
    if objects:
        report["objects"] = {"folder": str(objects) + (" (held-back 20 %)" if object_only else ""),
                             **eval_objects(bundle, objects, object_only)}
    if args.data and args.ablations.exists():
        report["ablations"] = json.loads(args.ablations.read_text())
    if args.data and args.open_vocabulary.exists():
        report["open_vocabulary"] = json.loads(args.open_vocabulary.read_text())
    report["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(report, indent=2))
    (args.out / "eval.md").write_text(markdown(report))
    print(markdown(report))
    print(f"Wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
