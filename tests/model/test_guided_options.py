"""Describe and the index planned text-guided (JobConfig.guide_query, --guide), and the CLI's switches."""

from __future__ import annotations

from rs_vlm_plugin.core.cli import _parser, job_config
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.jobs.index import EmbeddingIndex, build_index
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.describe import describe
from rs_vlm_plugin.core.raster import open_raster

PLAN = PlanConfig(max_tiles=24, native_roots=1)


def test_describe_guided_by_a_text_refines_where_it_scores_and_captions_every_tile(bundle, generated):
    with open_raster(generated["scene"]) as source:
        plain = describe(source, bundle, config=JobConfig(plan=PLAN))
        guided = describe(source, bundle, config=JobConfig(plan=PLAN, guide_query="buildings"))
    assert not plain.plan.scores and plain.plan.summary()["reasons"].keys() <= {"complexity"}
    assert guided.plan.scores and "query" in guided.plan.summary()["reasons"]
    assert guided.plan.summary()["native_leaves"] > 0
    levels = guided.by_level()
    assert len(levels["global"]) == 1 and levels["object"] and all(r.caption for r in guided.records)
    off = describe(open_raster(generated["scene"]), bundle,
                   config=JobConfig(plan=PLAN, guide_query="buildings", guided=False))
    assert not off.plan.scores  # guided=False keeps the complexity plan


def test_index_guided_by_a_text_is_searchable(bundle, generated, tmp_path):
    with open_raster(generated["scene"]) as source:
        path = build_index(source, bundle, tmp_path / "guided.gpkg", config=JobConfig(plan=PLAN, guide_query="a road"))
    index = EmbeddingIndex.open(path)
    assert index.meta["plan_summary"]["native"] and index.meta["plan_summary"]["reasons"].get("query")
    result = index.search(bundle, "a road", max_hits=3)
    assert len(result.hits) == 3 and result.hits[0].score >= result.hits[-1].score


def test_cli_switches_reach_the_job_config(tmp_path):
    parser = _parser()
    args = parser.parse_args(["caption", "x.tif", "-o", str(tmp_path / "o.gpkg"), "--guide", "storage tanks"])
    assert job_config(args, PLAN).guide_query == "storage tanks"
    args = parser.parse_args(["search", "x.tif", "tanks", "-o", str(tmp_path / "o.gpkg"), "--no-outlines",
                              "--no-guided"])
    config = job_config(args, PLAN)
    assert config.outlines is False and config.guided is False and config.guide_query == ""
    args = parser.parse_args(["search", "x.tif", "tanks", "-o", str(tmp_path / "o.gpkg")])
    config = job_config(args, PLAN)
    assert config.outlines is True and config.guided is None  # search is text-guided by default
