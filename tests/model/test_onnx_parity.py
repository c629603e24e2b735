"""ONNX-vs-torch parity of every exported graph (batch sizes 1, 3, 5), optimum style."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity needs torch (installed by build.py setup)")

from rs_vlm_plugin.modeling.export import DEFAULT_WEIGHTS, build_models, load_weights  # noqa: E402
from rs_vlm_plugin.modeling.text_encoder import SentenceEncoder, load_tokenizer, tokenize  # noqa: E402

TOLERANCE = 1e-4
LOGIT_TOLERANCE = 1e-3  # decoder logits are unnormalised (magnitudes around 10)


@pytest.fixture(scope="module")
def models(bundle):
    arrays, meta, vocab = load_weights(DEFAULT_WEIGHTS)
    kb = json.loads((bundle.folder / "knowledge_base.json").read_text())
    text = SentenceEncoder().eval()
    image, step, config, kb_emb = build_models(arrays, meta, vocab, kb, text, load_tokenizer())
    return image, text, step, kb_emb


def _tiles(bundle, batch):
    rng = np.random.default_rng(batch)
    return rng.integers(0, 256, (batch, bundle.image_size, bundle.image_size, 3), dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_image_tower_matches_torch_on_every_tier(bundle, models, batch):
    tiles = _tiles(bundle, batch)
    with torch.inference_mode():
        g, r, o, routing = (t.numpy() for t in models[0](torch.from_numpy(bundle.preprocess(tiles))))
    got = bundle.encode_tiers(tiles, batch_size=batch)
    assert got["regions"].shape == (batch, 13, bundle.embed_dim)
    assert got["objects"].shape == (batch, 196, bundle.embed_dim)
    diffs = {"global": np.abs(g - got["embedding"]).max(), "regions": np.abs(r - got["regions"]).max(),
             "objects": np.abs(o - got["objects"]).max(),
             "routing": np.abs(routing[:, 14:].mean(1) - got["routing"][:, 2]).max()}
    print(f"image tower batch {batch}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOLERANCE


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_text_tower_matches_torch(bundle, models, batch):
    texts = ["storage tanks next to a river", "a forest", "a paved road runs through dense trees",
             "many cars in a parking lot", "an airport"][:batch]
    ids, mask = tokenize(load_tokenizer(), texts)
    with torch.inference_mode():
        ref = models[1](ids, mask).numpy()
    got = bundle.encode_texts(texts)
    diff = float(np.abs(ref - got).max())
    print(f"text tower batch {batch}: max |torch - onnx| = {diff:.2e}")
    assert diff < TOLERANCE


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_decoder_matches_torch(bundle, models, batch):
    tiles = _tiles(bundle, 10 + batch)
    tiers = bundle.encode_tiers(tiles)
    tokens = np.random.default_rng(batch).integers(4, len(bundle.vocab), (batch, batch + 2))
    tokens[:, 0] = 1
    with torch.inference_mode():
        ref = models[2](*(torch.from_numpy(tiers[k]) for k in ("embedding", "regions", "objects")),
                        torch.from_numpy(tokens)).numpy()
    got = bundle.decoder_session.run(["logits"], {"global": tiers["embedding"], "regions": tiers["regions"],
                                                  "objects": tiers["objects"], "tokens": tokens})[0]
    diff = float(np.abs(ref - got).max())
    print(f"decoder batch {batch}: max |torch - onnx| = {diff:.2e}")
    assert got.shape == (batch, len(bundle.vocab))
    assert diff < LOGIT_TOLERANCE


def test_knowledge_base_embeddings_are_the_text_tower_of_the_concepts(bundle, models):
    from rs_vlm_plugin.modeling.export import concept_texts

    kb = bundle.knowledge_base
    concept = kb.concepts[0]
    raw = {"name": concept.name, "phrase": concept.phrase, "description": concept.description,
           "synonyms": list(concept.synonyms)}
    emb = bundle.encode_texts(concept_texts(raw)).mean(0)
    emb /= np.linalg.norm(emb)
    assert float(emb @ kb.embeddings[0]) > 0.999
    # The image graph fuses knowledge from the same embeddings.
    assert np.abs(models[3] - kb.embeddings).max() < 1e-5
