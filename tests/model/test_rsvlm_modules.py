"""The model's building blocks in torch: pooling identities, knowledge fusion, decoder shapes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (installed by build.py setup)")

from rs_vlm_plugin.modeling.rsvlm import (CaptionDecoder, ImageModel, KnowledgeFusion, ModelConfig,  # noqa: E402
                                          box_cell_weights, build_backbone, region_pooling_matrix)
from rs_vlm_train.evaluate import box_weights  # noqa: E402


def test_region_windows_average_their_cells():
    pool = region_pooling_matrix(14)
    assert pool.shape == (13, 196)
    assert torch.allclose(pool.sum(1), torch.ones(13))
    # The four quadrants partition the tile; so do the nine 3x3 windows.
    assert torch.allclose(pool[:4].sum(0) / 4, torch.full((196,), 1 / 196))
    assert torch.allclose((pool[4:] * (196 / 9)).sum(0), torch.ones(196), atol=1e-5)


def test_box_weights_torch_and_numpy_agree():
    for box in [(0.1, 0.2, 0.5, 0.9), (0.33, 0.33, 0.34, 0.34), (0.0, 0.0, 1.0, 1.0)]:
        assert np.allclose(box_cell_weights(box, 14).numpy(), box_weights(box, 14), atol=1e-6)


@pytest.fixture(scope="module")
def small_model():
    config = ModelConfig()
    trunk, net = build_backbone(config)
    gen = torch.Generator().manual_seed(0)
    kb = torch.nn.functional.normalize(torch.randn(30, 384, generator=gen), dim=-1)
    model = ImageModel(config, net, kb, torch.arange(30) % 3).eval()
    for expert in model.fusion.experts:  # non-trivial experts for the tests
        torch.nn.init.normal_(expert[2].weight, std=0.05, generator=gen)
    return trunk, model


def test_training_shortcuts_equal_the_exported_full_map(small_model):
    trunk, model = small_model
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fine, mid = trunk(x)
        feats = model.features(fine, mid)
        cells = model.cells(feats)  # the full fine map, as the exported graph builds it
        g_fast, _ = model.global_tokens(feats)
        g_full, _ = model.fusion(model.global_head(cells.mean(1)))
        r_fast, _ = model.region_tokens(feats)
        r_full, _ = model.fusion(model.region_head(torch.einsum("rc,ncd->nrd", model.region_pool, cells)))
        index = torch.tensor([0, 17, 100, 195])
        assert torch.allclose(model.cells(feats, index), cells[:, index])
    assert torch.allclose(g_fast, g_full, atol=1e-5)
    assert torch.allclose(r_fast, r_full, atol=1e-5)


def test_fusion_starts_as_identity_and_routes_by_retrieved_levels():
    config = ModelConfig()
    kb = torch.eye(6, 384)
    fusion = KnowledgeFusion(config, kb, torch.tensor([0, 0, 1, 1, 2, 2]))
    tokens = torch.nn.functional.normalize(torch.randn(5, 384), dim=-1)
    out, gates = fusion(tokens)
    assert torch.allclose(out, tokens, atol=1e-6)  # zero-initialised experts: identity
    assert gates.shape == (5, 3) and torch.allclose(gates.sum(-1), torch.ones(5))
    knowledge, levels = fusion.retrieve(torch.nn.functional.normalize(kb[4:5] + 0.01, dim=-1))
    assert levels[0, 2] > 0.9  # a token next to scene concepts retrieves scene knowledge
    off = KnowledgeFusion(ModelConfig(augment=False, experts=False), kb, torch.zeros(6, dtype=torch.long))
    assert off(tokens)[1].shape == (5, 1)


def test_decoder_is_causal_and_small():
    config = ModelConfig(vocab_size=500)
    decoder = CaptionDecoder(config).eval()
    assert sum(p.numel() for p in decoder.parameters()) < 10_000_000
    memory = decoder.memory(torch.randn(2, 384), torch.randn(2, 13, 384), torch.randn(2, 49, 384))
    assert memory.shape == (2, 63, config.dec_dim)
    tokens = torch.randint(4, 500, (2, 6))
    with torch.no_grad():
        full = decoder(memory, tokens)
        prefix = decoder(memory, tokens[:, :3])
    assert torch.allclose(full[:, :3], prefix, atol=1e-5)  # later words never change earlier logits
