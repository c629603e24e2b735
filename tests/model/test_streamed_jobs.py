"""Issue 13's speed and memory work keeps every result: a describe job that decodes captions
while it encodes (and drops the tokens) gives the records of one that keeps every token; a
search that skips the object tier gives the same hits; tiles read ahead on a thread are the same
tiles in the same order, and a read error still stops the job with its sentence; a second job
in the process reuses the ONNX sessions."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.bundle import SESSION_STATS, ModelBundle
from rs_vlm_plugin.core.errors import RsVlmError
from rs_vlm_plugin.core.encoding import encode
from rs_vlm_plugin.core.encoding.encode import encode_extent
from rs_vlm_plugin.core.encoding.tiles import tiles_to_encode
from rs_vlm_plugin.core.jobs.captioning import caption_tiles, tile_captions
from rs_vlm_plugin.core.jobs.config import JobConfig
from rs_vlm_plugin.core.jobs.describe import describe
from rs_vlm_plugin.core.jobs.query import tile_level, tile_scores
from rs_vlm_plugin.core.jobs.search import search
from rs_vlm_plugin.core.planning.dris import PlanConfig
from rs_vlm_plugin.core.progress import NullProgress
from rs_vlm_plugin.core.raster import ArraySource, RasterSource, open_raster


def _records(records):
    return [(r.level, r.depth, r.extent, r.caption, r.concepts, r.score, r.complexity) for r in records]


@pytest.fixture(scope="module")
def holed_scene(demo_scene):
    """The large demo scene in memory with its western third nodata, so that some tiles are skipped and
    the caption blocks of the streamed job are cut from the encoded tiles, not the planned ones."""
    large = demo_scene.parent / "demo_scene_large.tif"
    if not large.exists():
        pytest.skip(f"The large demo scene is missing at {large}; run `python3 build.py setup` first.")
    with open_raster(large) as source:
        g = source.georef
        data, _ = source.read_bands(g.extent, g.width, g.height)
    data = np.rint(data).astype(np.uint8)
    data[:, :, : g.width // 3] = 255
    return ArraySource(data, g, nodata=255, name="holed")


def test_streamed_describe_gives_the_records_of_the_one_that_keeps_every_token(bundle, holed_scene):
    config = JobConfig(plan=PlanConfig(uniform=True))
    streamed = describe(holed_scene, bundle, config=config)
    reference = encode_extent(holed_scene, bundle, None, config, NullProgress())
    assert len(reference.tiles) > 32  # a full caption block, then the rest
    assert len(reference.tiles) < len(tiles_to_encode(reference.plan, 1.0, bundle.image_size))  # skipped
    expected = caption_tiles(reference, bundle, config.top_concepts, holed_scene.name)
    assert _records(streamed.records) == _records(expected)
    assert streamed.timings["routing"] == reference.routing()


def test_search_without_object_tokens_gives_the_same_hits(bundle, demo_scene):
    with open_raster(demo_scene) as source:
        result = search(source, bundle, "a paved road", config=JobConfig(knowledge=False, guided=False, outlines=False))
        every = encode_extent(source, bundle, None, JobConfig(), NullProgress())
    assert "objects" in every.tiers
    from rs_vlm_plugin.core.expansion import expand_queries

    scores = tile_scores(every, expand_queries(bundle, ["a paved road"], knowledge=False).scorer(0))
    fine = [i for i, t in enumerate(every.tiles) if "global" not in t.levels or len(t.levels) > 1]
    fine = [i for i in fine if tile_level(every.tiles[i]) is not None]
    best = sorted(fine, key=lambda i: (-scores[i], i))[:len(result.hits)]
    assert [h.extent for h in result.hits] == [every.tiles[i].extent for i in best]
    np.testing.assert_allclose([h.score for h in result.hits], scores[best], rtol=0, atol=1e-6)
    captions = tile_captions(every, bundle, best)
    agree = np.mean([h.caption == captions[i] for h, i in zip(result.hits, best)])
    assert agree >= 0.8  # the hits' tokens are encoded again in a smaller batch: the last bits may differ


def test_tiles_read_ahead_are_the_tiles_read_in_turn(bundle, demo_scene, monkeypatch):
    with open_raster(demo_scene) as source:
        ahead = encode_extent(source, bundle, None, JobConfig(), NullProgress(), keep=("embedding", "regions"))
        monkeypatch.setattr(encode, "READ_AHEAD", 0)
        inline = encode_extent(source, bundle, None, JobConfig(), NullProgress(), keep=("embedding", "regions"))
    assert [t.key for t in ahead.tiles] == [t.key for t in inline.tiles]
    for key in ("embedding", "regions"):
        np.testing.assert_array_equal(ahead.tiers[key], inline.tiers[key])


class FailingSource(RasterSource):
    """A real raster whose ``fail_at``-th tile read fails the way a damaged file does."""

    def __init__(self, inner: RasterSource, fail_at: int) -> None:
        super().__init__(inner.name, inner.georef, inner.band_count, inner.source_dtype)
        self.inner, self.fail_at, self.reads = inner, fail_at, 0

    def read_bands(self, extent, width, height):  # noqa: D102
        if width == height == 224:
            self.reads += 1
            if self.reads == self.fail_at:
                raise RsVlmError("The raster file holed.tif could not be read near pixel column 448, row 0 "
                                 "(TIFFReadEncodedTile() failed); the file is damaged or incomplete.")
        return self.inner.read_bands(extent, width, height)


@pytest.mark.parametrize("read_ahead", [0, 2])
def test_a_read_error_in_the_reader_thread_stops_the_job_with_its_sentence(bundle, holed_scene, monkeypatch,
                                                                             read_ahead):
    monkeypatch.setattr(encode, "READ_AHEAD", read_ahead)
    source = FailingSource(holed_scene, fail_at=20)
    with pytest.raises(RsVlmError, match=r"could not be read near pixel column 448, row 0 .*damaged or incomplete"):
        describe(source, bundle)
    assert source.reads == 20  # nothing was read after the failing tile


def test_a_second_job_reuses_the_sessions(bundle_dir, demo_scene):
    first = ModelBundle.load(bundle_dir)
    with open_raster(demo_scene) as source:
        search(source, first, "a paved road")
        created = SESSION_STATS["created"]
        second = ModelBundle.load(bundle_dir)  # as a new job (command line, Processing) does
        search(source, second, "trees")
    assert SESSION_STATS["created"] == created
    assert second.image_session is first.image_session and second.text_session is first.text_session
