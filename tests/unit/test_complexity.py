"""Complexity map: fixed scales, monotonic in detail, fast."""

from __future__ import annotations

import numpy as np
import pytest

from rs_vlm_plugin.core.planning.complexity import (ComplexityConfig, cell_complexity, complexity_map, local_entropy,
                                                    luminance)


def smooth(size: int = 256, seed: int = 0) -> np.ndarray:
    """A gentle ramp with a grey level of noise: a field."""
    rng = np.random.default_rng(seed)
    ramp = 100 + 20 * np.linspace(0, 1, size)[None, :] + rng.normal(0, 1.0, (size, size))
    return np.repeat(np.clip(ramp, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def textured(size: int = 256, seed: int = 0) -> np.ndarray:
    """Blocky texture with edges every few pixels: a town at coarse scale."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)


def noise(size: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_uniform_image_scores_zero():
    cmap = complexity_map(np.full((64, 80, 3), 77, np.uint8))
    assert cmap.shape == (64, 80)
    assert cmap.dtype == np.float32
    assert float(cmap.max()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("window", [3, 8, 15])
def test_more_detail_scores_higher(window):
    scores = [float(complexity_map(make(), window).mean()) for make in (smooth, textured, noise)]
    assert 0.0 <= scores[0] < 0.12 < scores[1] < scores[2] <= 1.0, scores


def test_scores_are_absolute_not_per_image():
    # A faint texture must not be stretched to look as busy as a strong one.
    rng = np.random.default_rng(1)
    faint = (120 + rng.integers(0, 3, (128, 128, 3))).astype(np.uint8)
    assert complexity_map(faint).mean() < 0.5 * complexity_map(noise(128)).mean()


def test_values_in_unit_range_and_weights():
    cmap = complexity_map(noise(64))
    assert 0.0 <= cmap.min() and cmap.max() <= 1.0
    only_gradient = complexity_map(textured(64), config=ComplexityConfig(entropy_weight=0.0))
    only_entropy = complexity_map(textured(64), config=ComplexityConfig(gradient_weight=0.0))
    both = complexity_map(textured(64))
    assert np.allclose(both, (only_gradient + only_entropy) / 2, atol=1e-6)


def test_entropy_of_two_equal_levels_is_one_bit():
    lum = np.zeros((16, 16), np.float32)
    lum[:, 1::2] = 1.0  # alternate columns: half the window at each level
    assert np.allclose(local_entropy(lum, window=4)[:, 2:-2], 1.0)  # mirrored borders break the pattern


def test_luminance_of_grey_and_colour():
    assert luminance(np.full((2, 2, 3), 255, np.uint8)) == pytest.approx(1.0)
    assert luminance(np.array([[[255, 0, 0]]], np.uint8))[0, 0] == pytest.approx(0.299)


def test_cell_complexity_averages_the_window():
    cmap = np.zeros((100, 200), np.float32)
    cmap[:50, 100:] = 1.0  # north-east quadrant
    assert cell_complexity(cmap, (0.5, 0.0, 1.0, 0.5)) == pytest.approx(1.0)
    assert cell_complexity(cmap, (0.0, 0.0, 0.5, 0.5)) == pytest.approx(0.0)
    assert cell_complexity(cmap, (0.0, 0.0, 1.0, 1.0)) == pytest.approx(0.25)
    assert cell_complexity(cmap, (0.75, 0.25, 0.7501, 0.2501)) == pytest.approx(1.0)  # below a pixel


def test_a_512_overview_is_mapped_locally_in_whole_array_passes():
    # Speed is a benchmark figure, not a timed test: `build.py bench-speed` prints the planning share
    # and complexity_map_512_s. Here: a 512 overview gives a full-size map whose values depend only on
    # each pixel's neighbourhood (box sums over the whole array), so a crop has the same interior.
    image = np.concatenate([smooth(512)[:, :256], noise(512)[:, 256:]], axis=1)
    cmap = complexity_map(image)
    assert cmap.shape == (512, 512) and cmap.dtype == np.float32
    assert 0.0 <= cmap.min() and cmap.max() <= 1.0
    assert np.median(cmap[:, 300:]) > 0.5 > np.median(cmap[:, :200])  # noise busy, the field calm
    crop = complexity_map(image[100:300, 200:400])
    np.testing.assert_allclose(crop[16:-16, 16:-16], cmap[116:284, 216:384], atol=1e-5)
