"""Fit the project's caption decoder to any bundle's text space from caption text alone.

    python3 build.py fit-decoder --model BUNDLE_DIR --data ../shared/data [--epochs N] [--max-sentences N]

For a bundle without a decoder (an imported CLIP model) or with one (the default model), the
caption corpus (RSICD / RSITMD / Sydney caption text and the UCM train captions) is embedded by
the bundle's OWN text tower through onnxruntime, and the project's ``CaptionDecoder`` learns
to write each sentence back from its embedding (``train.pretrain_decoder``, the same loop as
the default model's text-only pre-training).  ``decoder.onnx``, ``vocab.json`` and the
manifest's "decoder" entry are then written into the bundle as ``modeling/export.py`` writes
them, with parity against torch checked at batch sizes 1, 3, 5; the bundle folder is rebuilt
beside itself and renamed into place, so a failed fit leaves it as it was.

How text stands in for the image tokens (the runtime gives the decoder a global token, 13
region tokens and the object tokens pooled 2x2):

* every slot -- global, regions, pooled objects -- holds its own noised copy of the sentence's
  embedding, renormalised (CapDec, Nukrai et al. 2022): the Gaussian noise, at a level drawn per
  sentence, spreads each text embedding over a neighbourhood as wide as the image-text modality
  gap, so the decoder learns to read a caption from a nearby point rather than from the exact
  text embedding.  Region and object copies get ``part_noise`` times more noise: a part of a tile
  agrees less with the tile's caption than the whole does;
* the region tier and the object tier are each dropped (left out of the memory) for a random
  ``tier_drop`` share of the batches, so the decoder never relies on a tier alone;
* at run time the exported graph first projects every (pooled) image token onto the text
  embeddings of ``projection_bank`` corpus sentences (softmax of cosine / ``projection_temperature``,
  DeCap, Li et al. 2023): the decoder then reads points of the text space it was fitted on,
  which closes the modality gap that noise alone only blurs.  ``--projection-bank 0`` turns it off.

Text embeddings are cached under ``--cache`` by the text tower's fingerprint; training is
seeded and checkpointed after every epoch, and a re-run resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rs_vlm_plugin.core.bundle import ModelBundle
from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.modeling.export import (PARITY_BATCHES, decoder_entry, decoder_parity, export_decoder,
                                           finish_bundle)
from rs_vlm_plugin.modeling.rsvlm import CaptionDecoder, ModelConfig, pool_objects

from .data import read_captions
from .features import normalise_caption
from .decoder import build_vocab, pretrain_decoder, read_corpus_parts

PARITY_LIMIT = 1e-3
EMBED_CHUNK = 8192  # sentences per cached embedding file: an interrupted embedding run resumes by chunk


@dataclass
class FitSettings:
    """Everything that shapes a fitted decoder (recorded in the manifest).

    Attributes:
        epochs: Passes over the distinct sentences.
        max_sentences: Use at most this many distinct sentences (a seeded sample); None: all.
        seed: Seeds the sample, the initial weights, batches and noise.
        noise: CapDec noise: per-dimension std of the global copy, drawn per sentence in [0, 1.5 x noise].
        part_noise: Noise factor of the region and object copies.
        tier_drop: Share of batches without the region tier (and, independently, the object tier).
        projection_bank: Corpus sentences the run-time tokens are projected onto (0: no projection).
        projection_temperature: Softmax temperature of that projection (cosine similarities).
        ucm: Add the UCM train captions (``ucm/captions.json``) to the corpus when present.
    """

    epochs: int = 3
    max_sentences: int | None = None
    seed: int = 0
    batch_size: int = 128
    lr: float = 5e-4
    warmup: int = 200
    noise: float = 0.08
    part_noise: float = 1.5
    tier_drop: float = 0.3
    min_count: int = 3
    projection_bank: int = 2048
    projection_temperature: float = 0.01
    dec_dim: int = ModelConfig.dec_dim  # the decoder's shape defaults to the default model's
    dec_layers: int = ModelConfig.dec_layers
    dec_heads: int = ModelConfig.dec_heads
    dec_ff: int = ModelConfig.dec_ff
    max_caption_tokens: int = ModelConfig.max_caption_tokens
    ucm: bool = True


# --------------------------------------------------------------------------- corpus and embeddings


def read_fit_corpus(data: Path, ucm: bool = True) -> dict[str, list[str]]:
    """Normalised caption text by source: RSICD, RSITMD, Sydney, and UCM train captions when asked.

    Raises:
        RsVlmError: When the folder holds no caption text at all.
    """
    data = Path(data)
    parts = read_corpus_parts(data)
    if ucm and (data / "ucm" / "captions.json").exists():
        parts["UCM train"] = [s for s in (normalise_caption(t) for item in read_captions(data / "ucm", "train")
                                          for t in item.sentences) if s]
    parts = {k: v for k, v in parts.items() if v}
    if not parts:
        raise RsVlmError(f"No caption text found in {data}: expected captions_text/rsicd_train_caps.txt, "
                         "rsitmd_train_caps.txt, sydney_train_val.json or ucm/captions.json. Point --data at a "
                         "folder laid out like ../shared/data.")
    return parts


def text_space_fingerprint(bundle: ModelBundle) -> str:
    """sha256 of what decides the text embeddings: the text tower, its tokenizer and settings.

    (Unlike the index's model fingerprint it ignores the decoder, so refitting reuses the cache.)
    """
    spec = bundle.manifest["text_encoder"]
    digest = hashlib.sha256(json.dumps({"text_encoder": spec, "embed_dim": bundle.embed_dim}, sort_keys=True).encode())
    for name in (spec["file"], spec["tokenizer"]):
        with open(bundle.folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _texts_key(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def embed_corpus(bundle: ModelBundle, texts: list[str], cache: Path, batch: int = 128,
                 log: Callable[[str], None] = print) -> np.ndarray:
    """Embeddings (N, D) of ``texts`` by the bundle's text tower, cached in chunks under ``cache``.

    Texts are embedded in length-sorted batches (little padding); each chunk of
    ``EMBED_CHUNK`` sentences is saved as it is done, so an interrupted run resumes.
    """
    cache.mkdir(parents=True, exist_ok=True)
    key = _texts_key(texts)
    final = cache / f"text_{key}.npy"
    if final.exists():
        return np.load(final)
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    out = np.zeros((len(texts), bundle.embed_dim), np.float32)
    start = time.time()
    for c, first in enumerate(range(0, len(order), EMBED_CHUNK)):
        rows = order[first:first + EMBED_CHUNK]
        part = cache / f"text_{key}.part{c}.npy"
        if part.exists():
            out[rows] = np.load(part)
            continue
        out[rows] = bundle.encode_texts([texts[i] for i in rows], batch_size=batch)
        np.save(part, out[rows])
        log(f"  embedded {first + len(rows)}/{len(texts)} sentences ({time.time() - start:.0f} s)")
    np.save(final, out)
    for part in cache.glob(f"text_{key}.part*.npy"):
        part.unlink()
    return out


# --------------------------------------------------------------------------- text in place of image tokens


def tier_layout(bundle: ModelBundle) -> tuple[int, int, int]:
    """(region tokens, object tokens given to the decoder, object tokens after pooling) of a bundle."""
    spec = bundle.manifest["image_encoder"]
    grid = int(spec.get("grid", bundle.image_size // 16))
    regions = sum(g * g for g in spec.get("region_grids", [2, 3]))
    pooled = (grid // 2) ** 2 if grid % 2 == 0 else grid * grid
    return regions, grid * grid, pooled


def text_only_memory(settings: FitSettings, regions: int, objects: int):
    """Memory builder for ``train.pretrain_decoder``: noised copies of each text embedding in every
    slot (global, ``regions``, pooled ``objects``), region / object tiers dropped per batch."""

    def memory(decoder: CaptionDecoder, emb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, d = emb.shape
        slots = 1 + regions + objects
        sigma = settings.noise * 1.5 * torch.rand(b, 1, 1, generator=gen)
        scale = torch.full((1, slots, 1), settings.part_noise)
        scale[:, 0] = 1.0
        x = F.normalize(emb[:, None] + sigma * scale * torch.randn(b, slots, d, generator=gen), dim=-1)
        keep_regions, keep_objects = (torch.rand(2, generator=gen) >= settings.tier_drop).tolist()
        return decoder.memory(x[:, 0], x[:, 1:1 + regions] if keep_regions else None,
                              x[:, 1 + regions:] if keep_objects else None)

    return memory


class TextSpaceStep(nn.Module):
    """The exported graph of a text-fitted decoder: pool the object tokens 2x2 (even grids), project
    every token onto the corpus's text embeddings (when a bank is given), then the next-word logits."""

    def __init__(self, decoder: CaptionDecoder, grid: int, bank: torch.Tensor | None, temperature: float) -> None:
        super().__init__()
        self.decoder = decoder
        self.grid = grid
        self.temperature = temperature
        self.register_buffer("bank", F.normalize(bank.float(), dim=-1) if bank is not None else None)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (..., D) -> softmax-weighted means of the bank's text embeddings, normalised."""
        if self.bank is None:
            return x
        weights = (F.normalize(x, dim=-1) @ self.bank.t() / self.temperature).softmax(-1)
        return F.normalize(weights @ self.bank, dim=-1)

    def forward(self, global_tok, regions, objects, tokens):  # noqa: D102
        if self.grid % 2 == 0:
            objects = pool_objects(objects, self.grid)
        memory = self.decoder.memory(self.project(global_tok), self.project(regions), self.project(objects))
        return self.decoder.hidden(memory, tokens)[:, -1] @ self.decoder.embed.weight.t()


# --------------------------------------------------------------------------- writing into the bundle


def _copy_entry(src: Path, dst: Path) -> None:
    """Hard link (or copy) one bundle entry; symbolic links stay links."""
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True)
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def install_decoder(bundle: ModelBundle, step: TextSpaceStep, vocab: list[str], fitted: dict,
                    parity: Callable | None = None) -> dict:
    """Write ``decoder.onnx``, ``vocab.json`` and the manifest's "decoder" entry into the bundle.

    The bundle is rebuilt in a temporary sibling folder (unchanged files hard-linked), checked,
    and renamed into place; on any failure the bundle stays as it was.

    Args:
        parity: ``(step, onnx path, make_tiers, batches) -> max |torch - onnx|``; default
            ``export.decoder_parity``.

    Returns:
        The new manifest.
    """
    folder = bundle.folder.resolve()
    old_decoder = bundle.manifest.get("decoder", {})
    replaced = {"manifest.json", "decoder.onnx", "vocab.json", old_decoder.get("file"), old_decoder.get("vocab")}
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.fit-", dir=folder.parent))
    work.chmod(0o755)
    try:
        for entry in folder.iterdir():
            if entry.name not in replaced:
                _copy_entry(entry, work / entry.name)
        config = step.decoder.config
        regions, objects, _ = tier_layout(bundle)
        d = bundle.embed_dim
        step.eval()

        def tiers(n: int, gen: torch.Generator):
            return tuple(F.normalize(torch.randn(*shape, generator=gen), dim=-1)
                         for shape in ((n, d), (n, regions, d), (n, objects, d)))

        example = tiers(2, torch.Generator().manual_seed(0)) + (torch.tensor([[1, 5, 6], [1, 7, 8]]) % config.vocab_size,)
        decoder_path = work / "decoder.onnx"
        export_decoder(step, example, decoder_path)
        (work / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        diff = (parity or decoder_parity)(step, decoder_path, tiers, PARITY_BATCHES)
        if not diff <= PARITY_LIMIT:
            raise RuntimeError(f"The exported decoder differs from torch by {diff:.2e} (limit {PARITY_LIMIT:.0e}); "
                               "the bundle was left unchanged.")
        manifest = json.loads(json.dumps(bundle.manifest))
        manifest["decoder"] = decoder_entry(config) | {"fitted": fitted}
        manifest["parity_max_abs_diff"] = {**manifest.get("parity_max_abs_diff", {}), "decoder": diff}
        finish_bundle(work, folder, manifest, {"decoder": decoder_path})
        return manifest
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- the fit


def fit_decoder(bundle_dir: Path, data: Path, settings: FitSettings | None = None,
                cache: Path = Path(".cache/fit_decoder"), on_epoch: Callable[[int], None] | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Fit a caption decoder to a bundle's text space from caption text and install it in the bundle.

    Args:
        bundle_dir: The bundle folder (its decoder, if any, is replaced).
        data: A folder laid out like ``../shared/data`` (``captions_text/``, ``ucm/captions.json``).
        settings: How to fit (defaults: :class:`FitSettings`).
        cache: Where text embeddings and training checkpoints are kept, by text-space fingerprint.
        on_epoch: Called with the number of finished epochs after each checkpoint.

    Returns:
        The manifest's new "decoder" entry.

    Raises:
        RsVlmError: The bundle or the caption text cannot be used (nothing was changed).
    """
    settings = settings or FitSettings()
    start = time.time()
    bundle = ModelBundle.load(bundle_dir)
    parts = read_fit_corpus(data, settings.ucm)
    corpus = [s for part in parts.values() for s in part]
    distinct = sorted(set(corpus))
    if settings.max_sentences and settings.max_sentences < len(distinct):
        rng = np.random.default_rng(settings.seed)
        distinct = sorted(distinct[i] for i in rng.choice(len(distinct), settings.max_sentences, replace=False))
        vocab = build_vocab(distinct, settings.min_count)
    else:
        vocab = build_vocab(corpus, settings.min_count)
    if len(vocab) <= 4:
        raise RsVlmError(f"The caption text in {data} has no word seen {settings.min_count} times or more; "
                         "give more sentences (or a smaller --min-count).")
    log(f"corpus: {len(corpus)} sentences ({len(distinct)} distinct used) from {', '.join(parts)}; "
        f"vocabulary {len(vocab)}")
    space = text_space_fingerprint(bundle)
    cache = Path(cache) / space[:16]
    emb = embed_corpus(bundle, distinct, cache, log=log)
    embed_s = time.time() - start
    regions, objects, pooled = tier_layout(bundle)
    config = ModelConfig(embed_dim=bundle.embed_dim, vocab_size=len(vocab), dec_dim=settings.dec_dim,
                         dec_layers=settings.dec_layers, dec_heads=settings.dec_heads, dec_ff=settings.dec_ff,
                         max_caption_tokens=settings.max_caption_tokens)
    # What shapes the training (the run-time projection does not: changing it reuses the fitted weights).
    training = {k: v for k, v in asdict(settings).items() if not k.startswith("projection")}
    run_key = hashlib.sha256(json.dumps([training, vocab, _texts_key(distinct)]).encode()).hexdigest()[:16]
    log(f"fitting the decoder: {settings.epochs} epochs over {len(distinct)} sentences "
        f"(checkpoints {cache / f'decoder_{run_key}.ckpt'})")
    decoder = pretrain_decoder(config, distinct, torch.from_numpy(emb), vocab, cache, settings.epochs, settings.seed,
                               memory=text_only_memory(settings, regions, pooled), tag=f"decoder_{run_key}",
                               batch_size=settings.batch_size, lr=settings.lr, warmup=settings.warmup,
                               on_epoch=on_epoch).eval()
    bank = None
    if settings.projection_bank:
        rng = np.random.default_rng(settings.seed + 1)
        rows = np.sort(rng.choice(len(distinct), min(settings.projection_bank, len(distinct)), replace=False))
        bank = torch.from_numpy(emb[rows])
    grid = int(bundle.manifest["image_encoder"].get("grid", bundle.image_size // 16))
    step = TextSpaceStep(decoder, grid, bank, settings.projection_temperature)
    fitted = {"text_only": True, "corpus": {k: len(v) for k, v in parts.items()}, "sentences": len(distinct),
              "epochs": settings.epochs, "seed": settings.seed, "settings": asdict(settings),
              "projection": {"sentences": 0 if bank is None else len(bank),
                             "temperature": settings.projection_temperature},
              "text_space": space, "embed_seconds": round(embed_s, 1),
              "fit_seconds": round(time.time() - start, 1)}
    manifest = install_decoder(bundle, step, vocab, fitted)
    log(f"decoder written into {bundle.folder} ({time.time() - start:.0f} s, parity "
        f"{manifest['parity_max_abs_diff']['decoder']:.1e})")
    return manifest["decoder"]


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    defaults = FitSettings()
    parser = argparse.ArgumentParser(description="Fit the caption decoder to a bundle's text space from caption text.")
    parser.add_argument("--model", type=Path, required=True, help="bundle folder (its decoder is replaced)")
    parser.add_argument("--data", type=Path, required=True, help="folder laid out like ../shared/data")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--max-sentences", type=int, default=None, help="at most this many distinct sentences")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-ucm", action="store_true", help="leave the UCM train captions out")
    parser.add_argument("--projection-bank", type=int, default=defaults.projection_bank,
                        help="sentences the run-time tokens are projected onto (0: none)")
    parser.add_argument("--cache", type=Path, default=Path(".cache/fit_decoder"))
    args = parser.parse_args(argv)
    settings = FitSettings(epochs=args.epochs, max_sentences=args.max_sentences, seed=args.seed, ucm=not args.no_ucm,
                           projection_bank=args.projection_bank)
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        entry = fit_decoder(args.model, args.data, settings, args.cache)
    except RsVlmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(entry["fitted"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
