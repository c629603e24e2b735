"""Grounded captions with the default model: a tile's caption names only what its own token ranks
among its best-evidenced things (core/jobs/grounding.py), on the real demo scene."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("rasterio")


@pytest.fixture(scope="module")
def demo_tiers(bundle, demo_scene):
    from rs_vlm_plugin.core.encoding.encode import encode_extent
    from rs_vlm_plugin.core.jobs.config import JobConfig
    from rs_vlm_plugin.core.progress import NullProgress
    from rs_vlm_plugin.core.raster import open_raster

    with open_raster(demo_scene) as source:
        return encode_extent(source, bundle, None, JobConfig(), NullProgress()).tiers


@pytest.mark.parametrize("top_k", [3, 8])
def test_each_caption_names_only_things_its_tile_sees(bundle, demo_tiers, top_k):
    from rs_vlm_plugin.core.jobs.grounding import grounded_captions, lexicon, named_things, seen_things

    names = list(lexicon())
    seen = seen_things(bundle, demo_tiers, top_k)
    assert seen.sum(axis=1).tolist() == [top_k] * len(seen)
    captions = grounded_captions(bundle, demo_tiers, top_k=top_k)
    assert all(captions)
    for i, caption in enumerate(captions):
        allowed = {names[j] for j in np.flatnonzero(seen[i])}
        assert named_things(caption) <= allowed, (caption, allowed)


def test_a_cut_of_zero_is_the_plain_decoder(bundle, demo_tiers):
    from rs_vlm_plugin.core.jobs.grounding import banned_tokens, grounded_captions

    assert banned_tokens(bundle, demo_tiers, 0) is None
    some = {k: v[:6] for k, v in demo_tiers.items()}
    assert grounded_captions(bundle, some, top_k=0) == bundle.caption(some)


def test_grounding_changes_what_the_plain_decoder_invents(bundle, demo_tiers):
    """The check can fail: with a cut of 1 the decoder must avoid every thing but one per tile, and
    at least one of the demo's plain captions names a second thing (a forest with a road or a river)."""
    from rs_vlm_plugin.core.jobs.grounding import grounded_captions, named_things

    plain = bundle.caption(demo_tiers)
    assert any(len(named_things(c)) >= 2 for c in plain)
    strict = grounded_captions(bundle, demo_tiers, top_k=1)
    assert all(len(named_things(c)) <= 1 for c in strict)
    assert strict != plain


def test_the_mean_image_is_recovered_for_bundles_without_it(bundle):
    """Bundles exported before image_mean.npy carry only the concepts' similarity to it: the things'
    biases recovered from those rank like the exact ones."""
    from rs_vlm_plugin.core.jobs.grounding import image_mean, thing_embeddings

    if not bundle.manifest["knowledge_base"].get("image_mean"):
        pytest.skip("this bundle has no image_mean.npy to compare with")
    older = copy.copy(bundle)
    older.manifest = copy.deepcopy(bundle.manifest)
    del older.manifest["knowledge_base"]["image_mean"]
    older._text_memo = {}
    _, emb = thing_embeddings(bundle)
    exact, recovered = emb @ image_mean(bundle), emb @ image_mean(older)
    assert np.corrcoef(exact, recovered)[0, 1] > 0.8
