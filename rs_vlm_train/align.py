"""Train the alignment head of the default model (issue 2's first model).

The EfficientNet-Lite backbone and the MiniLM encoder stay frozen: pooled backbone features
of every training view are computed once with onnxruntime and cached, then a small head
(image side) and a residual adapter (text side) are trained with a multi-positive symmetric
InfoNCE loss.  UCM image-caption pairs give the caption alignment; RESISC12 images with
class prompts add scene vocabulary.  Everything is seeded.

    python3 build.py train-head --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from rs_vlm_plugin.modeling.efficientnet_lite import LITE_CONFIGS, LITE_MEAN, LITE_STD, load_efficientnet_lite
from rs_vlm_plugin.modeling.export import DEFAULT_WEIGHTS, embed_texts
from rs_vlm_plugin.modeling.text_encoder import SentenceEncoder, load_tokenizer
from rs_vlm_plugin.modeling.towers import AlignmentHead, BackboneFeatures, HeadConfig, TextAdapter

from .data import load_image, read_captions, read_scene_folders, views
from .metrics import retrieval_recalls

DEFAULT_VIEWS = 8  # dihedral views of the whole image; more adds zoomed crops (see data.views)
SCENE_PROMPTS = ("an aerial image of {}.", "a satellite photo of {}.", "there is {} in the image.")


def _backbone_session(cache: Path, backbone: str):
    import onnxruntime as ort

    path = cache / f"{backbone}_features.onnx"
    if not path.exists():
        model = BackboneFeatures(load_efficientnet_lite(backbone)).eval()
        size = LITE_CONFIGS[backbone].image_size
        torch.onnx.export(model, (torch.zeros(2, 3, size, size),), str(path), input_names=["images"],
                          output_names=["features"], dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
                          opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def extract_features(paths: list[Path], n_views: int, cache: Path, tag: str, backbone: str) -> np.ndarray:
    """Pooled features (len(paths), n_views, 1280), cached under ``cache``."""
    out_file = cache / f"{tag}_{backbone}_v{n_views}.npy"
    if out_file.exists():
        return np.load(out_file)
    sess = _backbone_session(cache, backbone)
    size = LITE_CONFIGS[backbone].image_size
    mean = np.asarray(LITE_MEAN, np.float32)[:, None, None]
    std = np.asarray(LITE_STD, np.float32)[:, None, None]
    feats = np.zeros((len(paths), n_views, 1280), np.float32)
    batch, index = [], []
    start = time.time()
    rng = np.random.default_rng(sum(map(ord, tag)))  # seeded per set, independent of PYTHONHASHSEED

    def flush():
        x = (np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32) - mean) / std
        y = sess.run(["features"], {"images": x})[0]
        for (i, v), row in zip(index, y):
            feats[i, v] = row
        batch.clear()
        index.clear()

    for i, path in enumerate(paths):
        for v, view in enumerate(views(load_image(path), n_views, size, rng)):
            batch.append(view)
            index.append((i, v))
        if len(batch) >= 32:
            flush()
        if i % 200 == 0:
            print(f"  {tag}: {i}/{len(paths)} images, {time.time() - start:.0f} s", flush=True)
    if batch:
        flush()
    np.save(out_file, feats)
    return feats


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same text key counts as a positive."""
    logits = scale * img @ txt.t()
    target = (keys[:, None] == keys[None, :]).float()
    target = target / target.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.t().log_softmax(1), 1).mean())


def train(data: Path, out: Path, cache: Path, epochs: int = 60, seed: int = 0, backbone: str = "efficientnet-lite0",
          batch_size: int = 256, n_views: int = DEFAULT_VIEWS) -> dict:
    """Train head and adapter; write weights (npz with a JSON metadata entry) to ``out``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    cache.mkdir(parents=True, exist_ok=True)

    ucm_train = read_captions(data / "ucm", "train")
    ucm_val = read_captions(data / "ucm", "val")
    scenes = read_scene_folders(data / "resisc12" / "train") if (data / "resisc12" / "train").exists() else []
    print(f"UCM train {len(ucm_train)}, val {len(ucm_val)}, RESISC12 {len(scenes)} images", flush=True)

    f_train = extract_features([i.path for i in ucm_train], n_views, cache, "ucm_train", backbone)
    f_val = extract_features([i.path for i in ucm_val], 1, cache, "ucm_val", backbone)[:, 0]
    f_scene = extract_features([p for p, _ in scenes], 2, cache, "resisc12", backbone) if scenes else None

    # Texts: the frozen encoder's embeddings, computed once.
    encoder = SentenceEncoder().eval()
    tokenizer = load_tokenizer()
    texts = sorted({s for i in ucm_train for s in i.sentences})
    text_index = {t: k for k, t in enumerate(texts)}
    classes = sorted({c for _, c in scenes})
    prompts = [p.format(c.replace("_", " ")) for c in classes for p in SCENE_PROMPTS]
    all_texts = texts + prompts
    t0 = time.time()
    t_emb = torch.from_numpy(embed_texts(encoder, tokenizer, all_texts))
    print(f"embedded {len(all_texts)} texts in {time.time() - t0:.0f} s", flush=True)
    val_texts = [s for i in ucm_val for s in i.sentences]
    t_val = torch.from_numpy(embed_texts(encoder, tokenizer, val_texts))

    # Pairs: (feature source, image index, text index candidates, key base)
    ucm_caps = [[text_index[s] for s in i.sentences] for i in ucm_train]
    prompt_base = len(texts)
    scene_caps = [[prompt_base + classes.index(c) * len(SCENE_PROMPTS) + k for k in range(len(SCENE_PROMPTS))]
                  for _, c in scenes]

    config = HeadConfig()
    head, adapter = AlignmentHead(config), TextAdapter(config.embed_dim)
    log_scale = torch.nn.Parameter(torch.tensor(np.log(20.0), dtype=torch.float32))
    params = list(head.parameters()) + list(adapter.parameters()) + [log_scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    steps_per_epoch = max(1, (len(ucm_train) + len(scenes) // 4) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=epochs * steps_per_epoch, pct_start=0.1)
    ft_train, ft_scene = torch.from_numpy(f_train), torch.from_numpy(f_scene) if f_scene is not None else None

    def batch_indices():
        # 3/4 UCM pairs, 1/4 RESISC pairs per batch.
        n_scene = batch_size // 4 if scenes else 0
        u = rng.choice(len(ucm_train), batch_size - n_scene, replace=False)
        s = rng.choice(len(scenes), n_scene, replace=False) if n_scene else np.zeros(0, int)
        return u, s

    history = []
    for epoch in range(epochs):
        head.train()
        adapter.train()
        total = 0.0
        for _ in range(steps_per_epoch):
            u, s = batch_indices()
            vu = rng.integers(0, n_views, len(u))
            feats = [ft_train[u, vu]]
            tids = [rng.choice(ucm_caps[i]) for i in u]
            if len(s):
                vs = rng.integers(0, 2, len(s))
                feats.append(ft_scene[s, vs])
                tids += [rng.choice(scene_caps[i]) for i in s]
            x = torch.cat(feats)
            tid = torch.as_tensor(np.asarray(tids))
            # Keys: identical captions (and the prompts of one class) are the same positive.
            keys = torch.where(tid >= prompt_base, prompt_base + (tid - prompt_base) // len(SCENE_PROMPTS), tid)
            img = head(x)
            txt = adapter(t_emb[tid])
            loss = multi_positive_loss(img, txt, keys, log_scale.exp().clamp(max=100.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss)
        if epoch % 10 == 9 or epoch == epochs - 1:
            metrics = evaluate(head, adapter, torch.from_numpy(f_val), t_val)
            history.append({"epoch": epoch + 1, "loss": total / steps_per_epoch, **metrics})
            print(f"epoch {epoch + 1}: loss {total / steps_per_epoch:.3f} val mR {metrics['mR']:.1f} "
                  f"T2I R@1/5/10 {metrics['t2i_r1']:.1f}/{metrics['t2i_r5']:.1f}/{metrics['t2i_r10']:.1f}", flush=True)

    meta = {"backbone": backbone, "epochs": epochs, "seed": seed, "batch_size": batch_size, "views": n_views,
            "logit_scale": float(log_scale.exp()), "data": ["ucm train (captions)", "resisc12 train (class prompts)"],
            "val": history[-1], "history": history}
    arrays = {f"head.{k}": v.detach().numpy().astype(np.float16) for k, v in head.state_dict().items()}
    with torch.no_grad():
        head.eval()
        # Mean training-image embedding: the exporter turns it into a per-concept bias
        # (the concept's mean similarity to training images) that reduces hub concepts.
        mean_embedding = torch.cat([head(ft_train[:, v]) for v in range(n_views)]).mean(0)
    arrays["stats.image_mean"] = mean_embedding.numpy().astype(np.float32)
    arrays |= {f"adapter.{k}": v.detach().numpy().astype(np.float16) for k, v in adapter.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, meta_json=np.asarray(json.dumps(meta)), **arrays)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return meta


@torch.no_grad()
def evaluate(head, adapter, f_val: torch.Tensor, t_val: torch.Tensor) -> dict:
    """UCM val retrieval (5 captions per image, no deduplication)."""
    head.eval()
    adapter.eval()
    img = head(f_val).numpy()
    txt = adapter(t_val).numpy()
    return retrieval_recalls(img, txt, captions_per_image=5)


def main(argv=None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description="Train the RS-VLM alignment head.")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--cache", type=Path, default=Path(".cache/train"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--views", type=int, default=DEFAULT_VIEWS, help="training views per UCM image (8 dihedral, then zoomed crops)")
    args = parser.parse_args(argv)
    meta = train(args.data, args.out, args.cache, args.epochs, args.seed, n_views=args.views)
    print(json.dumps(meta["val"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
