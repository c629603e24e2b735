"""Importing open_clip CLIP checkpoints: every family, tiny, exported and run through the plugin's runtime.

The checkpoints are written by open_clip's own ``CLIP`` class (loaded from the cached wheel, see
``tests/open_clip_reference.py``) with random weights, so the key layout and the numbers are
open_clip's, not ours.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from rs_vlm_plugin.core.bundle import ModelBundle, RuntimeOptions
from rs_vlm_plugin.core.jobs.classify import classify
from rs_vlm_plugin.core.raster import ArraySource
from rs_vlm_plugin.modeling.clip.configs import FULL_CONFIGS, get_config
from rs_vlm_plugin.modeling.clip.export_clip import CLIP_MEAN, CLIP_STD, export_clip_bundle
from rs_vlm_plugin.modeling.clip.model import CLIP
from tests.open_clip_reference import CLIP_BPE, ROOT, load_open_clip, open_clip_kwargs, require

CLASSES = ["dense forest", "a river", "many buildings", "a parking lot", "farmland"]
# (tiny architecture, quick GELU, expected detected name)
FAMILIES = [("tiny-RN50", False), ("tiny-ViT-B-32", False), ("tiny-ViT-L-14", False),
            ("tiny-ViT-L-14-336", False), ("tiny-ViT-H-14", False), ("tiny-ViT-L-14", True)]


@pytest.fixture(scope="module")
def open_clip(tmp_path_factory):
    """open_clip's model and tokenizer modules."""
    require(CLIP_BPE, "The CLIP BPE vocabulary")
    return load_open_clip(tmp_path_factory.mktemp("open_clip_src"))


def reference_model(open_clip, name: str, quick_gelu: bool, seed: int = 0):
    """open_clip's CLIP for a tiny configuration, random weights (BatchNorm statistics too)."""
    torch.manual_seed(seed)
    config = get_config(name).with_quick_gelu(quick_gelu)
    model = open_clip.model.CLIP(**open_clip_kwargs(config)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
        model.logit_scale.fill_(math.log(30.0))
    return model


def preprocess(tiles: np.ndarray) -> torch.Tensor:
    """open_clip's normalisation of uint8 (N, S, S, 3) tiles (its transform minus the resize)."""
    x = torch.from_numpy(tiles).float().permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("name,quick_gelu", FAMILIES, ids=[f"{n}{'-quickgelu' if q else ''}" for n, q in FAMILIES])
def test_family_imports_exports_and_runs(open_clip, tmp_path, name, quick_gelu):
    reference = reference_model(open_clip, name, quick_gelu)
    checkpoint = tmp_path / f"{name}.pt"
    torch.save(reference.state_dict(), checkpoint)
    seen = []
    manifest = export_clip_bundle(checkpoint, tmp_path / "bundle", quick_gelu=quick_gelu or None,
                                  license_text="CC-BY-4.0", source="a test", bpe=CLIP_BPE,
                                  progress=lambda value, message: seen.append(value))

    expected = f"{name}-quickgelu" if quick_gelu else name
    assert manifest["sources"] == {"checkpoint": checkpoint.name, "source": "a test", "license": "CC-BY-4.0",
                                   "architecture": expected, "quick_gelu": quick_gelu,
                                   "tokenizer": manifest["sources"]["tokenizer"]}
    assert manifest["architecture"]["name"] == expected and "decoder" not in manifest
    assert all(0 <= d <= 1e-3 for d in manifest["parity_max_abs_diff"].values())
    assert seen == sorted(seen) and seen[-1] == 100
    assert manifest["logit_scale"] == pytest.approx(30.0, rel=1e-5)

    bundle = ModelBundle.load(tmp_path / "bundle", RuntimeOptions(device="cpu", threads=2))
    size, dim = bundle.image_size, bundle.embed_dim
    grid = manifest["image_encoder"]["grid"]
    tiles = np.random.default_rng(1).integers(0, 256, (5, size, size, 3), dtype=np.uint8)
    tiers = bundle.encode_tiers(tiles, batch_size=2)
    assert tiers["embedding"].shape == (5, dim) and tiers["regions"].shape == (5, 13, dim)
    assert tiers["objects"].shape == (5, grid * grid, dim) and tiers["routing"].shape == (5, 3, 3)
    for key in ("embedding", "regions", "objects"):
        np.testing.assert_allclose(np.linalg.norm(tiers[key], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tiers["routing"], 1 / 3, atol=1e-6)
    assert bundle.encode_tiers(tiles[:0])["objects"].shape == (0, grid * grid, dim)

    # The runtime's image and text embeddings are open_clip's (preprocessing and tokenizer included).
    tokenizer = open_clip.tokenizer.SimpleTokenizer(str(CLIP_BPE))
    texts = [f"an aerial image of {c}." for c in CLASSES]
    with torch.no_grad():
        ref_img = torch.nn.functional.normalize(reference.encode_image(preprocess(tiles)), dim=-1).numpy()
        ref_txt = torch.nn.functional.normalize(reference.encode_text(tokenizer(texts)), dim=-1).numpy()
    text_emb = bundle.encode_texts(texts)
    np.testing.assert_allclose(tiers["embedding"], ref_img, atol=2e-4)
    np.testing.assert_allclose(text_emb, ref_txt, atol=2e-4)

    # Zero-shot classification: the same probabilities as open_clip, and through the pipeline.
    def softmax(logits):
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    probs = softmax(bundle.logit_scale * tiers["embedding"] @ text_emb.T)
    ref_probs = softmax(30.0 * ref_img @ ref_txt.T)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-3)
    raster = np.random.default_rng(2).integers(0, 256, (3, 2 * size, 2 * size)).astype(np.uint8)
    result = classify(ArraySource(raster, name="scene"), bundle, CLASSES)
    assert result.records and all(r.label in CLASSES and 0 < r.confidence <= 1 for r in result.records)


@pytest.mark.parametrize("name", list(FULL_CONFIGS))
def test_full_size_key_layout_is_open_clips(open_clip, name):
    """Every full-size architecture has exactly open_clip's parameter names and shapes."""
    config = FULL_CONFIGS[name]
    with torch.device("meta"):
        theirs = open_clip.model.CLIP(**open_clip_kwargs(config)).state_dict()
        ours = CLIP(config).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_command_line_contract(open_clip, tmp_path):
    """The command line prints PROGRESS lines and stage lines; a bad file exits 1 with a sentence on stderr."""
    checkpoint = tmp_path / "skyclip.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                           reference_model(open_clip, "tiny-ViT-B-32", False).state_dict().items()}},
               checkpoint)
    out = tmp_path / "imported"
    cmd = [sys.executable, "-m", "rs_vlm_plugin.modeling.import_clip", str(checkpoint), "--out", str(out),
           "--name", "SkyCLIP tiny", "--license", "MIT", "--source", "test", "--bpe", str(CLIP_BPE)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    values = [int(line.split()[1]) for line in lines if line.startswith("PROGRESS ")]
    assert values[0] < values[-1] == 100 and values == sorted(values)
    assert any(line.startswith("Architecture: tiny-ViT-B-32") for line in lines)
    assert ModelBundle.load(out).name == "SkyCLIP tiny"

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    failed = subprocess.run(cmd[:3] + [str(broken), "--out", str(tmp_path / "never")], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert failed.returncode == 1 and failed.stderr.startswith("Error: broken.pt is not a readable torch checkpoint")
    assert not (tmp_path / "never").exists()
