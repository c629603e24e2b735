"""Loading CLIP checkpoints: refusing code, wrappers, detection, strict key checks, the tokenizer."""

from __future__ import annotations

import gzip
import html
import random

import pytest
import regex
import torch

from rs_vlm_plugin.modeling.clip.checkpoint import (CheckpointError, build_model, detect_architecture,
                                                    load_checkpoint)
from rs_vlm_plugin.modeling.clip.configs import ARCHITECTURES, FULL_CONFIGS, get_config
from rs_vlm_plugin.modeling.clip.model import CLIP
from rs_vlm_plugin.modeling.clip.tokenizer import build_clip_tokenizer
from rs_vlm_plugin.modeling import import_clip
from tests.open_clip_reference import CLIP_BPE, require


class WritesAFile:
    """Unpickling this would create a file: what a malicious checkpoint does."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture(scope="module")
def tiny_state() -> dict:
    torch.manual_seed(0)
    return CLIP(ARCHITECTURES["tiny-ViT-B-32"]).state_dict()


def test_code_execution_is_refused_and_never_runs(tmp_path, tiny_state):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_state, "payload": WritesAFile(str(target))}, path)
    with pytest.raises(CheckpointError, match="needs Python code to be run.*refused for safety") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)
    assert not target.exists()
    assert import_clip.main([str(path), "--out", str(tmp_path / "out")]) == 1
    assert not target.exists() and not (tmp_path / "out").exists()


def test_garbage_and_missing_files_are_sentences(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_checkpoint(tmp_path / "meta.pt")


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model", "module", "state_dict+module"])
def test_wrappers_load_the_same_tensors(tmp_path, tiny_state, wrap):
    state = {f"module.{k}": v for k, v in tiny_state.items()} if "module" in wrap else dict(tiny_state)
    if wrap.startswith("state_dict"):
        state = {"state_dict": state, "epoch": 10, "name": "skyclip"}
    elif wrap == "model":
        state = {"model": state}
    torch.save(state, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert set(loaded) == set(tiny_state)
    assert all(torch.equal(loaded[k], tiny_state[k]) for k in tiny_state)


def test_missing_unexpected_and_misshapen_tensors_are_listed(tiny_state):
    config = ARCHITECTURES["tiny-ViT-B-32"]
    missing = {k: v for k, v in tiny_state.items() if k != "visual.transformer.resblocks.1.mlp.c_fc.weight"}
    with pytest.raises(CheckpointError, match=r"missing tensors: visual\.transformer\.resblocks\.1\.mlp\.c_fc\.weight;"):
        build_model(config, missing)
    extra = {**tiny_state, "visual.head.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"missing tensors: none; unexpected tensors: visual\.head\.weight;"):
        build_model(config, extra)
    wrong = {**tiny_state, "visual.proj": torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match=r"wrong shapes: visual\.proj \(3, 3\) \(expected \(32, 32\)\)"):
        build_model(config, wrong)
    model = build_model(config, tiny_state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_state.items())


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_detects_every_architecture_from_shapes(name):
    with torch.device("meta"):
        state = CLIP(ARCHITECTURES[name]).state_dict()
    assert detect_architecture(state).name == name
    assert detect_architecture(state, quick_gelu=True).name == f"{name}-quickgelu"


def test_arch_override_and_unknown_shapes():
    with torch.device("meta"):
        state = CLIP(FULL_CONFIGS["ViT-L-14"]).state_dict()
    config = detect_architecture(state, arch="ViT-L-14-quickgelu")
    assert config.quick_gelu and config.vision.heads == 16
    assert get_config("ViT-H-14").vision.heads == 16 and get_config("RN50").vision.heads == 32
    with pytest.raises(CheckpointError, match="Unknown architecture 'ViT-Q'; choose one of RN50"):
        detect_architecture(state, arch="ViT-Q")
    state["visual.positional_embedding"] = torch.empty(26, 1024, device="meta")  # 5x5 patches of 14 px
    custom = detect_architecture(state)
    assert (custom.name, custom.vision.image_size, custom.vision.patch_size) == ("custom", 70, 14)
    with pytest.raises(CheckpointError, match="no 'text_projection'"):
        detect_architecture({"visual.conv1.weight": torch.zeros(1)})


# --- tokenizer --------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:] + [256 + n for n in range(256 - len(bs))]
    bs = bs + [b for b in range(256) if b not in bs]
    return dict(zip(bs, map(chr, cs)))


class PortedSimpleTokenizer:
    """A straightforward port of open_clip's SimpleTokenizer (clean='lower'; ftfy left out)."""

    def __init__(self, bpe_path) -> None:
        merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<start_of_text>",
                                                                                      "<end_of_text>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.pat = regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                 r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

    def bpe(self, token: str) -> list[str]:
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return list(word)

    def __call__(self, text: str, context: int = 77) -> list[int]:
        text = " ".join(html.unescape(html.unescape(text)).strip().split()).strip().lower()
        ids = [49406]
        for token in self.pat.findall(text):
            ids += [self.encoder[t] for t in self.bpe("".join(self.byte_encoder[b] for b in token.encode("utf-8")))]
        ids = ids[:context - 1] + [49407]
        return ids


def varied_strings(n: int = 300) -> list[str]:
    rng = random.Random(0)
    words = ["aerial", "image", "of", "a", "dense", "forest", "Storage", "tanks", "next", "to", "the", "river",
             "runway", "airport", "cars", "parked", "PARKING", "lot", "bridge", "crossing", "farmland", "ship",
             "harbour", "it's", "they're", "we'll", "don't", "Straße", "café", "naïve", "北京", "東京", "Москва",
             "résidentiel", "l'eau", "12", "3.5km", "2019", "#tag", "e-mail", "(buildings)", "---", "!!", "🙂",
             "über", "ÉCOLE", "x86_64", "co2", "10m/px", "a,b;c", "“quoted”", "tab\there", "new\nline"]
    out = ["", " ", "a", "A photo of a CAT", "  leading and trailing  ", "many     spaces", "Ünïcödé ÀÉÎ"]
    while len(out) < n:
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))))
    out.append(" ".join(["long"] * 120))  # truncated to 77 with the end token kept
    return out


def test_tokenizer_matches_simple_tokenizer(tmp_path):
    bpe = require(CLIP_BPE, "The CLIP BPE vocabulary")
    from rs_vlm_plugin.core.bundle import load_tokenizer

    port = PortedSimpleTokenizer(bpe)
    built = build_clip_tokenizer(bpe)
    assert built.get_vocab_size() == 49408
    built.save(str(tmp_path / "tokenizer.json"))
    runtime = load_tokenizer(tmp_path / "tokenizer.json", 77)  # as the plugin loads it from a bundle
    texts = varied_strings()
    encoded = runtime.encode_batch(texts)
    for text, enc in zip(texts, encoded):
        ids = [i for i, m in zip(enc.ids, enc.attention_mask) if m]
        assert ids == port(text), text
    assert len(encoded[-1].ids) == 77 and encoded[-1].ids[-1] == 49407
    assert all(i == 0 for e in encoded for i, m in zip(e.ids, e.attention_mask) if not m)  # pad id 0


def test_a_graph_exported_in_pieces_is_gathered_into_one_data_file(tmp_path):
    """Graphs over 2 GB (ViT-H-14's image tower) come out of torch as many weight files; the
    exporter gathers them into <name>.onnx + <name>.onnx.data, which onnxruntime runs."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from rs_vlm_plugin.modeling.clip.export_clip import export_graph, gather_external_data

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)).eval()
    x = torch.randn(3, 64)
    whole = tmp_path / "whole.onnx"
    export_graph(module, (x,), whole, input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole.onnx"]  # small: one file, no staging left

    pieces = tmp_path / "pieces"
    pieces.mkdir()
    onnx.save_model(onnx.load(str(whole)), str(pieces / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=0)  # as torch writes a big graph
    assert len(list(pieces.iterdir())) > 2
    out = tmp_path / "bundle"
    out.mkdir()
    gather_external_data(pieces / "model.onnx", out / "image_encoder.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["image_encoder.onnx", "image_encoder.onnx.data"]
    got = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"]).run(
        ["y"], {"x": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), atol=1e-5)
