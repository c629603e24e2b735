"""ONNX-vs-torch parity of each exported tower (batch sizes 1, 3, 5), optimum style."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity needs torch (installed by build.py setup)")

from rs_vlm_plugin.modeling.export import DEFAULT_WEIGHTS, load_head_weights  # noqa: E402
from rs_vlm_plugin.modeling.text_encoder import load_tokenizer, tokenize  # noqa: E402
from rs_vlm_plugin.modeling.towers import build_towers  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def towers(bundle):
    arrays, _ = load_head_weights(DEFAULT_WEIGHTS)
    image, text, _ = build_towers(arrays, bundle.manifest["image_encoder"]["backbone"])
    return image, text


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_image_tower_matches_torch(bundle, towers, batch):
    rng = np.random.default_rng(batch)
    tiles = rng.integers(0, 256, (batch, bundle.image_size, bundle.image_size, 3), dtype=np.uint8)
    with torch.inference_mode():
        ref = towers[0](torch.from_numpy(bundle.preprocess(tiles))).numpy()
    got = bundle.encode_images(tiles, batch_size=batch)
    diff = float(np.abs(ref - got).max())
    print(f"image tower batch {batch}: max |torch - onnx| = {diff:.2e}")
    assert diff < TOLERANCE


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_text_tower_matches_torch(bundle, towers, batch):
    texts = ["storage tanks next to a river", "a forest", "a paved road runs through dense trees",
             "many cars in a parking lot", "an airport"][:batch]
    ids, mask = tokenize(load_tokenizer(), texts)
    with torch.inference_mode():
        ref = towers[1](ids, mask).numpy()
    got = bundle.encode_texts(texts)
    diff = float(np.abs(ref - got).max())
    print(f"text tower batch {batch}: max |torch - onnx| = {diff:.2e}")
    assert diff < TOLERANCE


def test_knowledge_base_embeddings_are_the_text_tower_of_the_concepts(bundle):
    from rs_vlm_plugin.modeling.export import concept_texts

    kb = bundle.knowledge_base
    concept = kb.concepts[0]
    raw = {"name": concept.name, "phrase": concept.phrase, "description": concept.description,
           "synonyms": list(concept.synonyms)}
    emb = bundle.encode_texts(concept_texts(raw)).mean(0)
    emb /= np.linalg.norm(emb)
    assert float(emb @ kb.embeddings[0]) > 0.999
