"""Texture fields for the synthetic scenes: float32 arrays in [0, 1], built with numpy and
PIL's resampling (smooth noise is a random coarse grid upsampled bicubically)."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

Rng = np.random.Generator


def smooth_noise(rng: Rng, h: int, w: int, *, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-range noise with ``cells`` blobs along the longer side."""
    gh = max(2, round(cells * h / max(h, w)))
    gw = max(2, round(cells * w / max(h, w)))
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def stripes(h: int, w: int, *, period: float, angle: float, phase: float) -> np.ndarray:
    """A sinusoid in [-1, 1] with ``period`` pixels, its crests perpendicular to ``angle``."""
    xx = np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(angle))
    yy = np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
    return np.sin((xx + yy) * np.float32(2.0 * np.pi / max(period, 1.0)) + np.float32(phase))


def vertical_ramp(h: int, w: int) -> np.ndarray:
    """0 at the top row, 1 at the bottom row."""
    return np.broadcast_to(np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None], (h, w))


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), dtype=np.float32)


def jitter_colour(rng: Rng, base: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(base + rng.uniform(-amount, amount, size=3).astype(np.float32), 0.0, 1.0)


def shade(colour: np.ndarray, field: np.ndarray, strength: float) -> np.ndarray:
    """An HxWx3 image: ``colour`` modulated by ``field`` (in [-1, 1]) with ``strength``."""
    return np.clip(colour[None, None, :] * (1.0 + strength * field[..., None]), 0.0, 1.0)


def blend(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-pixel mix: ``weight`` (HxW in [0, 1]) of ``b`` over ``a``."""
    return a * (1.0 - weight[..., None]) + b * weight[..., None]
