"""Fitting the caption decoder to a bundle's text space from caption text alone
(rs_vlm_train/fit_decoder.py), on a tiny corpus the test writes and a copy of the default
bundle without its decoder."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fitting the decoder needs torch (installed by build.py setup)")

THINGS = ["cars", "trees", "boats", "houses", "tanks", "planes"]
COLOURS = ["red", "green", "white", "grey"]
PLACES = ["road", "river", "lake", "forest", "runway"]
RELATIONS = ["near the", "beside a", "along the"]


def write_corpus(root: Path, n: int = 40, seed: int = 0) -> Path:
    """A data folder with ``n`` distinct short sentences in captions_text/rsicd_train_caps.txt."""
    rng = np.random.default_rng(seed)
    sentences: list[str] = []
    while len(sentences) < n:
        s = (f"many {COLOURS[rng.integers(len(COLOURS))]} {THINGS[rng.integers(len(THINGS))]} are "
             f"{RELATIONS[rng.integers(len(RELATIONS))]} {PLACES[rng.integers(len(PLACES))]}.")
        if s not in sentences:
            sentences.append(s)
    folder = root / "captions_text"
    folder.mkdir(parents=True)
    (folder / "rsicd_train_caps.txt").write_text("\n".join(s.capitalize() for s in sentences) + "\n")
    return root


def copy_without_decoder(bundle_dir: Path, target: Path) -> Path:
    """The default bundle's files (ONNX towers as links) without decoder.onnx, vocab.json, "decoder"."""
    target.mkdir(parents=True)
    for entry in bundle_dir.iterdir():
        if entry.name in ("decoder.onnx", "vocab.json", "manifest.json") or entry.name.startswith("."):
            continue
        if entry.suffix == ".onnx":
            (target / entry.name).symlink_to(entry)
        else:
            shutil.copy2(entry, target / entry.name)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest.pop("decoder")
    manifest["parity_max_abs_diff"].pop("decoder", None)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def snapshot(folder: Path) -> dict:
    """Every entry of a folder (and its siblings) with a hash of its bytes or link target."""
    out = {}
    for entry in sorted(folder.parent.iterdir()):
        if entry.is_dir() and entry != folder:
            out[entry.name] = "dir"
    for entry in sorted(folder.iterdir()):
        out[f"{folder.name}/{entry.name}"] = str(entry.readlink()) if entry.is_symlink() else \
            hashlib.sha256(entry.read_bytes()).hexdigest()
    return out


def tiny_settings(**changes):
    from rs_vlm_train.fit_decoder import FitSettings

    base = dict(epochs=40, batch_size=8, lr=3e-3, warmup=10, noise=0.02, min_count=2, projection_bank=64,
                dec_dim=64, dec_layers=1, dec_heads=2, dec_ff=128, max_caption_tokens=12, tier_drop=0.3)
    return FitSettings(**(base | changes))


@pytest.fixture(scope="module")
def fitted(bundle_dir, tmp_path_factory):
    """A tiny decoder fitted into a decoder-less copy of the default bundle."""
    from rs_vlm_train.fit_decoder import fit_decoder

    root = tmp_path_factory.mktemp("fit")
    data = write_corpus(root / "data")
    model = copy_without_decoder(bundle_dir, root / "models" / "clip-like")
    cache = root / "cache"
    entry = fit_decoder(model, data, tiny_settings(), cache)
    return {"root": root, "data": data, "model": model, "cache": cache, "entry": entry}


def test_fit_writes_a_decoder_the_runtime_uses(fitted):
    from rs_vlm_plugin.core.bundle import ModelBundle

    model = fitted["model"]
    assert (model / "decoder.onnx").is_file() and (model / "vocab.json").is_file()
    manifest = json.loads((model / "manifest.json").read_text())
    entry = manifest["decoder"]
    assert entry["file"] == "decoder.onnx" and entry["vocab"] == "vocab.json" and entry["beam"] == 3
    fit = entry["fitted"]
    assert fit["text_only"] is True and fit["corpus"] == {"RSICD": 40} and fit["sentences"] == 40
    assert fit["epochs"] == 40 and fit["seed"] == 0 and fit["projection"]["sentences"] == 40
    assert 0 <= manifest["parity_max_abs_diff"]["decoder"] <= 1e-3
    # The towers are untouched (still the links to the default bundle), no temporary folders remain.
    assert (model / "text_encoder.onnx").is_symlink()
    assert sorted(p.name for p in model.parent.iterdir()) == ["clip-like"]

    bundle = ModelBundle.load(model)
    assert bundle.has_decoder and bundle.vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    tiles = np.random.default_rng(0).integers(0, 256, (2, bundle.image_size, bundle.image_size, 3), dtype=np.uint8)
    captions = bundle.caption(bundle.encode_tiers(tiles))
    assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions)


def test_decoding_a_training_sentence_embedding_gives_back_its_words(fitted):
    from rs_vlm_plugin.core.bundle import ModelBundle

    bundle = ModelBundle.load(fitted["model"])
    sentences = (fitted["data"] / "captions_text" / "rsicd_train_caps.txt").read_text().splitlines()[:10]
    emb = bundle.encode_texts(sentences)
    tiers = {"embedding": emb, "regions": np.repeat(emb[:, None], 13, 1), "objects": np.repeat(emb[:, None], 196, 1)}
    captions = bundle.caption(tiers)
    recalls = []
    for sentence, caption in zip(sentences, captions):
        words = sentence.lower().rstrip(".").split()
        got = caption.lower().rstrip(".").split()
        recalls.append(sum(w in got for w in words) / len(words))
    # The template words ("many ... are ...") alone make up 2/7 of each sentence: most must be the content.
    assert np.mean(recalls) >= 0.75, list(zip(sentences, captions))


def test_failed_fits_say_what_to_do_and_leave_the_bundle_as_it_was(fitted, tmp_path, monkeypatch):
    from rs_vlm_plugin.core.errors import RsVlmError
    from rs_vlm_train import fit_decoder as module

    model = fitted["model"]
    before = snapshot(model)
    empty = tmp_path / "empty"
    (empty / "captions_text").mkdir(parents=True)
    with pytest.raises(RsVlmError, match="No caption text found .* Point --data at a folder"):
        module.fit_decoder(model, empty, tiny_settings(), fitted["cache"])
    assert snapshot(model) == before

    # Export fails after the new files were written: the parity check disagrees.
    monkeypatch.setattr(module, "decoder_parity", lambda *args: 1.0)
    with pytest.raises(RuntimeError, match="differs from torch .* left unchanged"):
        module.fit_decoder(model, fitted["data"], tiny_settings(), fitted["cache"])
    assert snapshot(model) == before

    broken = tmp_path / "models" / "no-text"
    shutil.copytree(model, broken, symlinks=True)
    (broken / "text_encoder.onnx").unlink()
    before = snapshot(broken)
    with pytest.raises(RsVlmError, match="text_encoder.onnx is missing; export the model again"):
        module.fit_decoder(broken, fitted["data"], tiny_settings(), fitted["cache"])
    assert snapshot(broken) == before


class Interrupt(Exception):
    pass


def test_an_interrupted_fit_resumes_from_its_checkpoint(fitted, bundle_dir, tmp_path, capsys):
    from rs_vlm_train.fit_decoder import fit_decoder

    settings = tiny_settings(epochs=4)
    model = copy_without_decoder(bundle_dir, tmp_path / "models" / "m")
    cache = tmp_path / "cache"

    def stop_after_two(epoch: int) -> None:
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_decoder(model, fitted["data"], settings, cache, on_epoch=stop_after_two)
    assert "decoder" not in json.loads((model / "manifest.json").read_text())
    assert len(list(cache.glob("*/decoder_*.ckpt"))) == 1
    capsys.readouterr()
    seen: list[int] = []
    fit_decoder(model, fitted["data"], settings, cache, on_epoch=seen.append)
    assert seen == [3, 4]
    assert "resuming after epoch 2/4" in capsys.readouterr().out
    assert not list(cache.glob("*/decoder_*.ckpt"))

    # The same weights as an uninterrupted fit with the same seed.
    reference = tmp_path / "reference"
    fit_decoder(copy_without_decoder(bundle_dir, tmp_path / "models" / "r"), fitted["data"], settings, reference)
    (resumed,) = cache.glob("*/decoder_*.pt")
    (straight,) = reference.glob("*/decoder_*.pt")
    a, b = torch.load(resumed, weights_only=True), torch.load(straight, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
