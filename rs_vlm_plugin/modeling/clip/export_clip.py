"""Export an open_clip CLIP checkpoint to an RS-VLM bundle (format version 2, no caption decoder).

The bundle has the layout described in ``modeling/export.py``; the image tower gives the four
outputs ``core.bundle.ModelBundle.encode_tiers`` reads:

    embedding (N, D)             CLIP's image embedding
    regions   (N, 13, D)         dense features averaged over the 2x2 and 3x3 windows
    objects   (N, G*G, D)        dense features on the object grid (G in the manifest's image_encoder.grid)
    routing   (N, 1+13+G*G, 3)   1/3 everywhere: CLIP has no experts

Dense features are one joint-space vector per patch (ViT) or per cell of the last ResNet stage
(the attention pool's value path, as MaskCLIP does). Every token is L2-normalised.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..export import (BUNDLE_FORMAT, BUNDLE_VERSION, IMAGE_OUTPUTS, KNOWLEDGE_BASE, embed_knowledge_base,
                      finish_bundle, validate_image, validate_text)
from ..rsvlm import REGION_GRIDS, region_pooling_matrix
from .checkpoint import build_model, detect_architecture, load_checkpoint
from .configs import ClipConfig
from .model import CLIP
from .tokenizer import CONTEXT_LENGTH, DEFAULT_BPE, build_clip_tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PARITY_LIMIT = 1e-3

Progress = Callable[[float, str], None]


def object_grid(config: ClipConfig) -> int:
    """Side of the object grid: image_size / 16 when the native grid pools evenly onto it, else the native grid."""
    native, target = config.vision.native_grid, config.vision.image_size // 16
    return target if target and native % target == 0 else native


class ClipImageTiers(nn.Module):
    """Images (N, 3, S, S), normalised -> embedding, regions, objects, routing (see the module docstring)."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model
        native = model.config.vision.native_grid
        self.grid = object_grid(model.config)
        self.factor = native // self.grid
        self.register_buffer("region_pool", region_pooling_matrix(native, REGION_GRIDS), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: D102
        pooled, dense = self.model.dense_image_features(images)
        cells = dense.flatten(1, 2)  # (N, g*g, D), row by row
        regions = torch.einsum("rc,ncd->nrd", self.region_pool, cells)
        if self.factor > 1:
            dense = F.avg_pool2d(dense.permute(0, 3, 1, 2), self.factor).permute(0, 2, 3, 1)
        objects = dense.flatten(1, 2)
        embedding, regions, objects = (F.normalize(t, dim=-1) for t in (pooled, regions, objects))
        tokens = torch.cat([embedding[:, None], regions, objects], 1)
        routing = torch.ones_like(tokens[..., :1]).expand(-1, -1, 3) / 3.0
        return embedding, regions, objects, routing


class ClipTextTower(nn.Module):
    """input_ids, attention_mask (N, T) -> normalised embedding (N, D).

    The mask zeroes the padding ids (which are 0 already), so the input stays in the graph and
    the runtime's two-input call works unchanged.
    """

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.normalize(self.model.encode_text(input_ids * attention_mask), dim=-1)


def _print_progress(value: float, message: str = "") -> None:
    print(f"PROGRESS {int(round(value))}", flush=True)
    if message:
        print(message, flush=True)


def export_graph(module: nn.Module, args: tuple, dest: Path, **kwargs) -> None:
    """``torch.onnx.export`` of ``module`` into ``dest`` (opset 17, the TorchScript exporter).

    torch writes a graph over 2 GB as the ``.onnx`` plus one file per weight in its folder; each
    graph is therefore exported into its own staging folder and, when it came out in pieces,
    gathered into ``dest`` plus a single ``<dest>.data`` beside it, which onnxruntime reads from
    the model's folder. Graphs under the limit stay one self-contained file.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.stem}-", dir=dest.parent))
    try:
        target = staging / dest.name
        with torch.no_grad():
            torch.onnx.export(module, args, str(target), opset_version=17, dynamo=False, **kwargs)
        if [f for f in staging.iterdir() if f != target]:
            gather_external_data(target, dest)
        else:
            os.replace(target, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def gather_external_data(source: Path, dest: Path) -> None:
    """Save the ONNX model ``source`` (whose weights lie in files beside it) as ``dest`` with all
    its weights in one ``<dest name>.data`` file in ``dest``'s folder."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dest.name}.data", size_threshold=1024)


def export_clip_bundle(checkpoint: str | Path, out_dir: str | Path, arch: str | None = None,
                       quick_gelu: bool | None = None, name: str | None = None, license_text: str | None = None,
                       source: str | None = None, bpe: str | Path = DEFAULT_BPE,
                       knowledge_base: str | Path = KNOWLEDGE_BASE, progress: Progress = _print_progress,
                       threads: int | None = None) -> dict:
    """Import an open_clip checkpoint and write it as an RS-VLM bundle into ``out_dir``.

    The bundle is written into a temporary sibling folder and renamed into place at the end, so
    a failed or interrupted export never leaves a half-written bundle.

    Args:
        checkpoint: The open_clip ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` file.
        out_dir: The bundle folder (replaced when it exists).
        arch: Architecture name overriding detection (``configs.ARCHITECTURES``, ``-quickgelu`` allowed).
        quick_gelu: Force quick GELU on or off; None keeps the architecture's choice.
        name: Model name shown in the plugin (default: the checkpoint's file name without suffix).
        license_text: The weights' licence, recorded in the manifest.
        source: Where the weights come from (paper, URL), recorded in the manifest.
        bpe: open_clip's BPE vocabulary file.
        knowledge_base: Concepts to embed through the text tower.
        progress: Called with a percentage and a stage sentence.
        threads: torch's CPU threads (default: all cores).

    Returns:
        The manifest that was written.

    Raises:
        CheckpointError: The checkpoint is unsafe, unreadable or does not fit the architecture.
        FileNotFoundError: The BPE file is missing.
        RuntimeError: ONNX and torch disagree by more than 1e-3.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir).resolve()
    start = time.time()
    progress(2, f"Loading {checkpoint.name} (tensors only)")
    state = load_checkpoint(checkpoint)
    config = detect_architecture(state, arch, quick_gelu)
    progress(8, f"Architecture: {config.name} (quick GELU {'on' if config.quick_gelu else 'off'})")
    model = build_model(config, state)
    logit_scale = float(state["logit_scale"].float().exp().reshape(-1)[0])
    del state
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    work.chmod(0o755)
    try:
        from ...core.bundle import load_tokenizer

        build_clip_tokenizer(bpe).save(str(work / "tokenizer.json"))
        tokenizer = load_tokenizer(work / "tokenizer.json", CONTEXT_LENGTH)
        image_tower, text_tower = ClipImageTiers(model).eval(), ClipTextTower(model).eval()
        kb = json.loads(Path(knowledge_base).read_text(encoding="utf-8"))
        progress(12, f"Embedding the knowledge base ({len(kb['concepts'])} concepts) with the text tower")
        kb_emb = embed_knowledge_base(text_tower, tokenizer, kb)

        size = config.vision.image_size
        progress(25, "Exporting the image tower (global, region and object tokens)")
        image_path = work / "image_encoder.onnx"
        export_graph(image_tower, (torch.zeros(2, 3, size, size),), image_path,
                     input_names=["images"], output_names=IMAGE_OUTPUTS,
                     dynamic_axes={"images": {0: "batch"}} | {k: {0: "batch"} for k in IMAGE_OUTPUTS})
        progress(50, "Exporting the text tower")
        text_path = work / "text_encoder.onnx"
        enc = tokenizer.encode_batch(["an aerial image of a forest", "a road"])
        ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
        export_graph(text_tower, (ids, mask), text_path,
                     input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                     dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                   "embedding": {0: "batch"}})

        progress(65, "Checking ONNX against torch (batch sizes 1, 3, 5)")
        parity = {"image_encoder": validate_image(image_tower, image_path, size),
                  "text_encoder": validate_text(text_tower, tokenizer, text_path)}
        for tower, diff in parity.items():
            progress(80, f"parity {tower}: max |torch - onnx| = {diff:.2e}")
            if not diff <= PARITY_LIMIT:  # also catches NaN
                raise RuntimeError(f"The exported {tower} differs from torch by {diff:.2e} (limit {PARITY_LIMIT:g}); "
                                   "the export is unusable. Report this with the checkpoint's architecture.")

        progress(85, "Writing the knowledge base and the manifest")
        np.save(work / "kb_embeddings.npy", kb_emb)
        shutil.copy2(knowledge_base, work / "knowledge_base.json")
        grid = object_grid(config)
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "name": name or checkpoint.stem,
            "description": f"Imported open_clip {config.name} checkpoint ({checkpoint.name}): CLIP image and text "
                           "towers; dense patch features for region and object tokens; no caption decoder.",
            "embed_dim": config.embed_dim,
            "logit_scale": logit_scale,
            "trained": True,
            "architecture": config.to_dict(),
            "image_encoder": {"file": "image_encoder.onnx", "input": "images", "output": "embedding",
                              "outputs": IMAGE_OUTPUTS, "image_size": size,
                              # core/bundle.py normalises raw 0..255 pixels: CLIP's mean and std times 255
                              "mean": [m * 255.0 for m in CLIP_MEAN], "std": [s * 255.0 for s in CLIP_STD],
                              "channels": "RGB", "layout": "NCHW", "backbone": config.name, "grid": grid,
                              "native_grid": config.vision.native_grid, "region_grids": list(REGION_GRIDS),
                              "experts": ["single"]},
            "text_encoder": {"file": "text_encoder.onnx", "inputs": ["input_ids", "attention_mask"],
                             "output": "embedding", "tokenizer": "tokenizer.json", "max_tokens": CONTEXT_LENGTH},
            "knowledge_base": {"file": "knowledge_base.json", "embeddings": "kb_embeddings.npy",
                               "concepts": len(kb["concepts"]), "version": kb.get("version", 1)},
            "parity_max_abs_diff": parity,
            "sources": {"checkpoint": checkpoint.name, "source": source, "license": license_text,
                        "architecture": config.name, "quick_gelu": config.quick_gelu,
                        "tokenizer": "open_clip SimpleTokenizer BPE (bpe_simple_vocab_16e6, MIT)"},
            "export_seconds": round(time.time() - start, 1),
        }
        progress(95, "Moving the bundle into place")
        finish_bundle(work, out_dir, manifest, {"image_encoder": image_path, "text_encoder": text_path})
        progress(100, f"Bundle written to {out_dir}")
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)

