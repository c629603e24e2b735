"""Query-time knowledge through the real default model: classify and search with it on and off."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.jobs.classify import classify
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.progress import RecordingProgress
from rs_vlm_plugin.core.raster import open_raster

CLASSES = ["forest", "storage tanks", "water", "buildings"]


@pytest.fixture(scope="module")
def runs(bundle, generated):
    """classify and search on the generated scene, with query-time knowledge on and off."""
    out = {}
    with open_raster(generated["scene"]) as source:
        for knowledge in (True, False):
            config = JobConfig(plan=PlanConfig(max_tiles=8), max_hits=5, knowledge=knowledge)
            progress = RecordingProgress()
            out[knowledge] = {
                "classify": classify(source, bundle, CLASSES, config=config),
                "search": search(source, bundle, "storage tanks next to a river", config=config, progress=progress),
                "plain": search(source, bundle, "qwerty zxcv", config=config),
                "messages": progress.messages}
    return out


def test_classify_changes_scores_not_structure(runs):
    on, off = runs[True]["classify"], runs[False]["classify"]
    assert on.classes == off.classes == CLASSES and on.plan.n_tiles == off.plan.n_tiles
    assert [(r.extent, r.level, r.depth) for r in on.records] == [(r.extent, r.level, r.depth) for r in off.records]
    for result in (on, off):
        assert all(r.label in CLASSES and 0.0 < r.confidence <= 1.0 for r in result.records)
        assert sum(result.shares().values()) == pytest.approx(1.0) and 1 <= len(result.scene) <= 3
        # the whole view is summarised from its tiles: its classes are their largest area shares
        largest = sorted(((c, s) for c, s in result.shares().items() if s > 0), key=lambda kv: -kv[1])[:3]
        assert [c for c, _ in result.scene] == [c for c, _ in largest]
        assert [s for _, s in result.scene] == pytest.approx([s for _, s in largest])
    assert not np.allclose([r.confidence for r in on.records], [r.confidence for r in off.records])


def test_search_changes_scores_not_structure(runs):
    on, off = runs[True], runs[False]
    assert len(on["search"].hits) == len(off["search"].hits) >= 3
    for result in (on["search"], off["search"]):
        assert [h.rank for h in result.hits] == list(range(1, len(result.hits) + 1))
        assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert [h.score for h in on["search"].hits] != pytest.approx([h.score for h in off["search"].hits])
    assert any(m.startswith('"storage tanks next to a river" also searched as: ') for m in on["messages"])
    assert not any("also searched as" in m for m in off["messages"])


def test_a_query_that_names_no_concept_is_scored_alone_either_way(runs):
    on, off = runs[True]["plain"], runs[False]["plain"]
    assert [h.extent for h in on.hits] == [h.extent for h in off.hits]
    assert [h.score for h in on.hits] == pytest.approx([h.score for h in off.hits], abs=1e-6)
