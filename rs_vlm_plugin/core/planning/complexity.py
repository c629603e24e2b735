"""How much detail an image holds, per pixel: what DRIS refines on.

The score mixes two cues of luminance, each over a ``window`` x ``window`` neighbourhood:

- gradient energy: the mean Sobel gradient magnitude (edges, texture);
- local entropy: the Shannon entropy of the grey-level histogram (variety of tones).

Both are divided by fixed scales (:class:`ComplexityConfig`), not by the image's own range,
so scores compare across images: a uniform image scores 0 everywhere, a busy one near 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601


@dataclass(frozen=True)
class ComplexityConfig:
    """Weights and fixed scales of the complexity score.

    Attributes:
        gradient_weight: Weight of the gradient energy in the mean.
        entropy_weight: Weight of the local entropy in the mean.
        gradient_scale: Mean Sobel magnitude that scores 1, in luminance (0..1) per pixel;
            the Sobel response is divided by 8 so a unit step reads 0.5 on its two edge
            pixels. 0.1 is about 25 grey levels per pixel: busy urban texture saturates,
            sensor noise of a grey level or two scores a few percent.
        entropy_levels: Grey levels of the entropy histogram.
        entropy_bits: Entropy that scores 1; ``log2(entropy_levels)`` (all levels equally
            frequent) by default. A window smaller than ``sqrt(entropy_levels)`` cannot
            reach it.
    """

    gradient_weight: float = 0.5
    entropy_weight: float = 0.5
    gradient_scale: float = 0.1
    entropy_levels: int = 16
    entropy_bits: float | None = None

    @property
    def entropy_scale(self) -> float:
        """Bits of entropy that score 1."""
        return self.entropy_bits if self.entropy_bits is not None else math.log2(self.entropy_levels)


DEFAULT_CONFIG = ComplexityConfig()


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1] of a uint8 ``(H, W, 3)`` image (a ``(H, W)`` image is taken as grey)."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.float32) / 255.0
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"Expected an (H, W, 3) image, got shape {rgb.shape}.")
    return (rgb[..., :3].astype(np.float32) @ _LUMA) / 255.0


def gradient_energy(lum: np.ndarray, window: int = 8, scale: float = DEFAULT_CONFIG.gradient_scale) -> np.ndarray:
    """Windowed mean Sobel magnitude of ``lum``, divided by ``scale`` and clipped to [0, 1]."""
    p = np.pad(lum.astype(np.float32), 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    magnitude = np.hypot(gx, gy) / 8.0
    return np.clip(_box_sum(magnitude.astype(np.float64), window) / (window * window * scale), 0.0, 1.0)


def local_entropy(lum: np.ndarray, window: int = 8, levels: int = DEFAULT_CONFIG.entropy_levels) -> np.ndarray:
    """Shannon entropy in bits of the ``levels``-bin grey histogram over each window."""
    quantised = np.minimum((lum * levels).astype(np.int32), levels - 1)
    n = window * window
    # Counts per level: box sums of the one-hot planes (exact integers), one axis at a time in
    # int16 (the running sums stay under 32767 for maps up to 4096 px and windows up to 8 px).
    one_hot = quantised[None] == np.arange(levels, dtype=np.int32)[:, None, None]
    small = window <= 8 and max(lum.shape) + window <= 4096
    counts = _box_sum_separable(one_hot, window, np.int16) if small else _box_sum(one_hot.astype(np.int32), window)
    # H = log2(n) - sum(c log2 c) / n, with c log2 c looked up for every possible count.
    c = np.arange(n + 1, dtype=np.float64)
    c_log_c = np.zeros(n + 1, np.float64)
    c_log_c[1:] = c[1:] * np.log2(c[1:])
    return (math.log2(n) - c_log_c[counts].sum(axis=0) / n).clip(0.0, None)


def complexity_map(rgb: np.ndarray, window: int = 8, config: ComplexityConfig = DEFAULT_CONFIG) -> np.ndarray:
    """Per-pixel content complexity of an image.

    Args:
        rgb: uint8 ``(H, W, 3)`` image.
        window: Side in pixels of the neighbourhood both cues are measured over.
        config: Weights and fixed scales.

    Returns:
        float32 ``(H, W)`` in [0, 1]: the weighted mean of the normalised gradient energy and
        the normalised local entropy.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}.")
    lum = luminance(rgb)
    gradient = gradient_energy(lum, window, config.gradient_scale)
    entropy = np.clip(local_entropy(lum, window, config.entropy_levels) / config.entropy_scale, 0.0, 1.0)
    total = config.gradient_weight + config.entropy_weight
    combined = (config.gradient_weight * gradient + config.entropy_weight * entropy) / total
    return combined.astype(np.float32)


def cell_complexity(cmap: np.ndarray, frac_window: tuple[float, float, float, float]) -> float:
    """Mean complexity over part of a map.

    Args:
        cmap: ``(H, W)`` complexity map.
        frac_window: ``(left, top, right, bottom)`` as fractions of the map's width and
            height, measured from its top-left corner. At least one pixel is always used.

    Returns:
        The mean of the map's pixels that the window touches.
    """
    rows, cols = cmap.shape
    left, top, right, bottom = frac_window
    c0, c1 = _pixel_span(left, right, cols)
    r0, r1 = _pixel_span(top, bottom, rows)
    return float(cmap[r0:r1, c0:c1].mean())


def _pixel_span(start: float, stop: float, n: int) -> tuple[int, int]:
    # The tolerance keeps exact quadrant borders (k / 2**d) from grabbing a neighbour's pixel.
    i0 = min(max(math.floor(start * n + 1e-6), 0), n - 1)
    i1 = min(max(math.ceil(stop * n - 1e-6), i0 + 1), n)
    return i0, i1


def _box_sum_separable(a: np.ndarray, window: int, dtype) -> np.ndarray:
    """:func:`_box_sum` of a bool or integer array, one axis after the other in ``dtype``
    (the same integers; the caller makes sure ``dtype`` holds a row's running sum)."""
    before = (window - 1) // 2
    after = window - 1 - before
    pad = [(0, 0)] * (a.ndim - 2) + [(before, after), (before, after)]
    p = np.pad(a.astype(dtype), pad, mode="symmetric")
    rows = np.cumsum(p, axis=-1, dtype=dtype)
    p = rows[..., window - 1:].copy()
    p[..., 1:] -= rows[..., :-window]
    cols = np.cumsum(p, axis=-2, dtype=dtype)
    p = cols[..., window - 1:, :].copy()
    p[..., 1:, :] -= cols[..., :-window, :]
    return p


def _box_sum(a: np.ndarray, window: int) -> np.ndarray:
    """Sum over a ``window`` x ``window`` neighbourhood of every pixel (last two axes, same size).

    Borders are mirrored, so edge pixels see a full window.
    """
    before = (window - 1) // 2
    after = window - 1 - before
    pad = [(0, 0)] * (a.ndim - 2) + [(before, after), (before, after)]
    p = np.pad(a, pad, mode="symmetric")
    integral = np.zeros(p.shape[:-2] + (p.shape[-2] + 1, p.shape[-1] + 1), dtype=p.dtype)
    integral[..., 1:, 1:] = p.cumsum(axis=-2).cumsum(axis=-1)
    w = window
    return integral[..., w:, w:] - integral[..., :-w, w:] - integral[..., w:, :-w] + integral[..., :-w, :-w]
