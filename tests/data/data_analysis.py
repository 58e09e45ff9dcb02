"""Measure augmentation parameters back from output pixels (numpy only, implementation-free).

Used on the DALI pipelines and on the reference loader alike, so both are judged by the same
yardstick. Images are float (3, H, W) in [0, 1] as both loaders return them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tests import shard_sets as T

GRAY_SPREAD = 0.03  # mean channel spread below which a crop counts as grayscale
BLUR_RATIO = 0.5  # Laplacian energy ratio strong/weak below which a crop counts as blurred


def padding(image: np.ndarray) -> np.ndarray:
    """(H, W) True where all channels are exactly 0 (coordinate images never are)."""
    return (image == 0).all(axis=0)


def _slope(values: np.ndarray, valid: np.ndarray, axis: int) -> float:
    """Least-squares slope of ``values`` along ``axis`` (1 = columns) over valid pixels."""
    idx = np.indices(values.shape)[axis]
    x, y = idx[valid].astype(np.float64), values[valid].astype(np.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / max((x * x).sum(), 1e-12))


@dataclass(frozen=True)
class Geometry:
    scale_x: float
    scale_y: float
    flipped: bool


def geometry(image: np.ndarray, *, source_hw: tuple[int, int]) -> Geometry:
    """Scale and flip of a weak crop of :func:`T.coordinate_image`: red-blue and green-blue are
    exact linear ramps of source x and y, so their slopes per output pixel give 1/scale."""
    h, w = source_hw
    valid = ~padding(image)
    per_x = T.COORD_RANGE / (w - 1) / 255.0
    per_y = T.COORD_RANGE / (h - 1) / 255.0
    sx = _slope(image[0] - image[2], valid, axis=1)
    sy = _slope(image[1] - image[2], valid, axis=0)
    return Geometry(scale_x=per_x / max(abs(sx), 1e-9), scale_y=per_y / max(abs(sy), 1e-9), flipped=sx < 0)


def is_gray(image: np.ndarray, valid: np.ndarray) -> bool:
    spread = image.max(axis=0) - image.min(axis=0)
    return float(spread[valid].mean()) < GRAY_SPREAD


def laplacian_energy(image: np.ndarray, valid: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the channel mean, on pixels whose neighbours are
    valid. The achromatic checker dominates it; grayscale keeps it, blur removes most of it."""
    g = image.mean(axis=0)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    inner = valid[1:-1, 1:-1] & valid[:-2, 1:-1] & valid[2:, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:]
    return float((lap[inner] ** 2).mean()) if inner.any() else 0.0


def is_blurred(weak: np.ndarray, strong: np.ndarray, valid: np.ndarray) -> bool:
    return laplacian_energy(strong, valid) < BLUR_RATIO * laplacian_energy(weak, valid)


@dataclass(frozen=True)
class Box:
    present: bool
    area: float  # fraction of the crop
    aspect: float  # height / width
    rectangle: bool  # the mask is exactly its bounding box


def box(mask: np.ndarray) -> Box:
    if not mask.any():
        return Box(False, 0.0, 0.0, True)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    return Box(True, float(mask.sum()) / mask.size, h / w, int(mask.sum()) == h * w)


def boundary_band(label: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Chebyshev) of a change of label value."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:-1, :] |= label[1:, :] != label[:-1, :]
    band = edge.copy()
    for _ in range(radius):
        grown = band.copy()
        grown[1:, :] |= band[:-1, :]
        grown[:-1, :] |= band[1:, :]
        grown[:, 1:] |= band[:, :-1]
        grown[:, :-1] |= band[:, 1:]
        band = grown
    return band


def nearest_class(image: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    colours = np.asarray(palette, dtype=np.float64) / 255.0
    d = ((image.transpose(1, 2, 0)[:, :, None, :] - colours[None, None]) ** 2).sum(-1)
    return d.argmin(-1)
