"""Calibrated stacking through the real default model: classify with a margin and without."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rs_vlm_plugin.core.bundle import ModelBundle
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.jobs.classify import classify
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.raster import open_raster
from rs_vlm_plugin.core.seen_bias import seen_bias_offsets

CLASSES = ["forest", "meadow", "railway station", "storage tanks"]
TRAINED = ["forest", "storage tanks", "industrial area", "river"]


def _with_seen_bias(bundle_dir, folder, gamma):
    """The default bundle's files (links) with a manifest that carries the given margin."""
    folder.mkdir()
    for path in bundle_dir.iterdir():
        if path.name != "manifest.json":
            (folder / path.name).symlink_to(path)
    manifest = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    manifest["seen_bias"] = {"gamma": gamma, "trained_classes": TRAINED}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return ModelBundle.load(folder)


@pytest.fixture(scope="module")
def runs(bundle_dir, generated, tmp_path_factory):
    root = tmp_path_factory.mktemp("seen_bias")
    biased = _with_seen_bias(bundle_dir, root / "biased", 0.3)
    plain = _with_seen_bias(bundle_dir, root / "plain", 0.0)
    config = JobConfig(plan=PlanConfig(max_tiles=8), knowledge=False)
    with open_raster(generated["scene"]) as source:
        return {"biased": biased, "on": classify(source, biased, CLASSES, config=config),
                "off": classify(source, biased, CLASSES, config=JobConfig(plan=config.plan, knowledge=False,
                                                                          seen_bias=False)),
                "zero": classify(source, plain, CLASSES, config=config)}


def test_trained_classes_take_the_whole_margin_and_new_ones_less(runs):
    off = seen_bias_offsets(runs["biased"], CLASSES, ("an aerial image of {}.",))
    assert off[0] == pytest.approx(-0.3, abs=1e-5) and off[3] == pytest.approx(-0.3, abs=1e-5)
    assert -0.3 < off[1] < 0 and -0.3 < off[2] < 0  # meadow and railway station are not trained classes
    assert not seen_bias_offsets(runs["biased"], CLASSES, ("{}",), enabled=False).any()


def test_the_margin_moves_probability_to_the_new_classes_and_off_means_off(runs):
    def new_share(result):  # per tile: a new label's probability, or what a trained label leaves (an upper bound)
        new = ("meadow", "railway station")
        return sum(r.confidence if r.label in new else 1.0 - r.confidence for r in result.records) / len(result.records)

    on, off, zero = runs["on"], runs["off"], runs["zero"]
    assert [(r.label, r.confidence) for r in off.records] == [(r.label, r.confidence) for r in zero.records]
    assert off.scene == zero.scene
    assert len(on.records) == len(off.records) and [r.extent for r in on.records] == [r.extent for r in off.records]
    assert new_share(on) > new_share(off) + 0.1
    assert sum(r.label in ("meadow", "railway station") for r in on.records) >= \
        sum(r.label in ("meadow", "railway station") for r in off.records)


def test_query_familiarity_on_the_real_model(bundle):
    """A trained class is fully familiar; a text unlike any remote-sensing concept is not, and its
    message names trained classes."""
    from rs_vlm_plugin.core.seen_bias import SeenBias, query_familiarity

    trained = SeenBias.from_manifest(bundle.manifest).trained_classes
    if not trained:
        pytest.skip("this bundle names no trained classes")
    prompts = ("an aerial image of {}.", "a satellite photo of {}.")
    forest, odd = query_familiarity(bundle, [trained[0], "a violin concerto in a minor key"], prompts)
    assert forest.score == pytest.approx(1.0, abs=1e-5) and forest.familiar and forest.message == ""
    assert not odd.familiar and odd.score < forest.score
    assert set(odd.nearest) <= set(trained) and odd.nearest[0] in odd.message
