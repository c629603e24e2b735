"""The caption decoder's training: text-only pre-training, fine-tuning on paired images with text-only
reconstruction mixed in, and beam-search generation from cached tokens."""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rs_vlm_plugin.core.decoding import BOS, EOS, PAD, UNK, beam_search, detokenize
from rs_vlm_plugin.modeling.rsvlm import SPECIAL_TOKENS, CaptionDecoder, ModelConfig

from . import features as feat
from .seeding import seed_everything


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


def read_corpus_by_class(data: Path) -> dict[str, list[str]]:
    """RSICD / RSITMD sentences by the class their file names carry ("desert_12.jpg" -> "desert").

    Sentences of files whose names carry no class (RSICD's "00001.jpg") are left out.
    """
    folder = Path(data) / "captions_text"
    out: dict[str, list[str]] = {}
    for prefix in ("rsicd", "rsitmd"):
        caps, names = folder / f"{prefix}_train_caps.txt", folder / f"{prefix}_train_filename.txt"
        if not (caps.exists() and names.exists()):
            continue
        lines = [line for line in caps.read_text(encoding="utf-8").splitlines() if line.strip()]
        files = [line.strip() for line in names.read_text(encoding="utf-8").splitlines() if line.strip()]
        per_file = len(lines) // max(1, len(files))
        for k, name in enumerate(files):
            label = name.rsplit("_", 1)[0] if "_" in name else ""
            if not label.isalpha():
                continue
            for line in lines[k * per_file:(k + 1) * per_file]:
                sentence = feat.normalise_caption(line)
                if sentence:
                    out.setdefault(label, []).append(sentence)
    return out


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


def _decoder_update(decoder: CaptionDecoder, opt, memory: torch.Tensor | list[torch.Tensor],
                    tokens: torch.Tensor | list[torch.Tensor]) -> float:
    """One teacher-forced optimisation step on padded token batches; returns the loss.

    ``memory`` and ``tokens`` may be lists of batches with different memory layouts (paired
    images with all tiers, text-only rows with the global slot only): their losses are averaged
    over all tokens of all batches and optimised in one step.
    """
    memories = memory if isinstance(memory, list) else [memory]
    batches = tokens if isinstance(tokens, list) else [tokens]
    total, count = 0.0, 0
    for mem, tok in zip(memories, batches):
        tok = tok[:, : int((tok != PAD).sum(1).max())]
        logits = decoder(mem, tok[:, :-1])
        target = tok[:, 1:].reshape(-1)
        n = int((target != PAD).sum())
        total = total + n * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target, ignore_index=PAD,
                                            label_smoothing=0.1)
        count += n
    loss = total / max(1, count)
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


@dataclass
class PairedSource:
    """Images (their cached tokens) with captions, for decoder fine-tuning.

    Attributes:
        cache: ``global`` (N, V, D), ``regions`` (N, V, 13, D), ``objects`` (N, V, 49, D).
        sentences: Each image's captions.
        per_epoch: Images drawn per epoch, each with one of its captions; None: every
            (image, caption) pair once per epoch.
    """

    name: str
    cache: dict
    sentences: list[list[str]]
    per_epoch: int | None = None


def finetune_decoder(decoder: CaptionDecoder, sources: list[PairedSource], vocab: list[str], config: ModelConfig,
                     epochs: int, seed: int, drop_tier: str | None = None, text: tuple[torch.Tensor, list[str]] | None = None,
                     text_share: float = 0.0, noise: float = 0.08) -> CaptionDecoder:
    """Fine-tune on paired images, a random view each, with text-only reconstruction mixed in.

    Args:
        sources: The paired sets (UCM captions first; weakly paired scene images, box sentences).
        text: (embeddings, sentences) of the text-only corpus; with ``text_share`` > 0 each step
            also decodes that share of corpus sentences from their own noised embeddings (global
            slot only), so the corpus's words stay in the decoder's language.
    """
    seed_everything(seed)
    decoder = copy.deepcopy(decoder)
    gen = torch.Generator().manual_seed(seed)
    encoded = []
    for src in sources:
        flat = [feat.normalise_caption(s) for sents in src.sentences for s in sents]
        offsets = torch.tensor([0] + [len(s) for s in src.sentences]).cumsum(0)
        encoded.append((encode_words(flat, vocab, config.max_caption_tokens), offsets))
    if text is not None and text_share > 0:
        text_emb, text_sents = text
        text_tokens = encode_words(text_sents, vocab, config.max_caption_tokens)
    batch = 64
    n_text = int(round(batch * text_share / (1 - text_share))) if text is not None and 0 < text_share < 1 else 0
    memory_text = noised_global_memory(noise)

    def epoch_items() -> list[tuple[int, int, int]]:
        """(source, image, row of its sentence tokens) of one epoch, shuffled."""
        items = []
        for k, (src, (_, offsets)) in enumerate(zip(sources, encoded)):
            n = len(src.sentences)
            if src.per_epoch is None:
                items += [(k, i, int(r)) for i in range(n) for r in range(int(offsets[i]), int(offsets[i + 1]))]
            else:
                picks = torch.randperm(n, generator=gen)[:src.per_epoch].tolist()
                while len(picks) < src.per_epoch:
                    picks += torch.randperm(n, generator=gen)[:src.per_epoch - len(picks)].tolist()
                for i in picks:
                    count = int(offsets[i + 1] - offsets[i])
                    items.append((k, i, int(offsets[i]) + int(torch.randint(0, count, (1,), generator=gen))))
        order = torch.randperm(len(items), generator=gen).tolist()
        return [items[j] for j in order]

    steps_per_epoch = max(1, len(epoch_items()) // batch) if epochs else 1
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.AdamW(decoder.parameters(), lr=3e-4, weight_decay=0.01)
    step = 0
    start = time.time()
    for epoch in range(epochs):
        decoder.train()
        items = epoch_items()
        run, steps = 0.0, 0
        for k in range(0, max(1, len(items) - batch + 1), batch):
            chunk = items[k:k + batch]
            for g in opt.param_groups:
                g["lr"] = 3e-4 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / total))
            memories, tokens = [], []
            for s_idx, src in enumerate(sources):
                rows = [(i, r) for s, i, r in chunk if s == s_idx]
                if not rows:
                    continue
                img = torch.tensor([i for i, _ in rows])
                n_views = src.cache["global"].shape[1]
                v = torch.randint(0, n_views, (len(rows),), generator=gen)
                memories.append(memory_of(decoder, src.cache, img, v, drop_tier))
                tokens.append(encoded[s_idx][0][torch.tensor([r for _, r in rows])])
            if n_text:
                pick = torch.randint(0, len(text_sents), (n_text,), generator=gen)
                memories.append(memory_text(decoder, text_emb[pick], gen))
                tokens.append(text_tokens[pick])
            run += _decoder_update(decoder, opt, memories, tokens)
            step += 1
            steps += 1
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"[decoder] epoch {epoch + 1}/{epochs} loss {run / max(1, steps):.3f} "
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


