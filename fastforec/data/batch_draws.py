"""What goes into batch (epoch, step) of a rank: which samples, and every random parameter.

Everything here is a pure function of (seed, epoch, step, rank) and the sample sizes. That is
the whole determinism story of the data side: no generator carries state across batches, so a
resumed run only needs the position (epoch, step) to see exactly the batches of the
uninterrupted run, and prefetching ahead of the consumer cannot change what is drawn.

Ordering: each epoch draws one global permutation of the split (identical on every rank, seeded
without the rank); rank r takes every world_size-th element starting at r, truncated to the
same length on every rank. Ranks are therefore disjoint and together cover the split up to the
``< world_size`` samples dropped per epoch (a different few each epoch).

Augmentation parameters are drawn in numpy, batch-wise, from a generator seeded with
(seed, stream, rank, epoch, step), and handed to DALI as per-sample argument inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastforec.config import AugConfig

# Independent random streams, so that e.g. enabling labeled_strong does not shift the
# unlabeled augmentation parameters.
STREAM_ORDER_LABELED = 1
STREAM_ORDER_UNLABELED = 2
STREAM_AUG_LABELED = 3
STREAM_AUG_UNLABELED = 4
STREAM_AUG_UNLABELED_2 = 5  # the second strong view (UniMatch): its own photometric and CutMix draws

HUE_DEGREES = 360.0  # the config's hue is a fraction of the colour circle (torchvision's convention)
BLUR_TRUNCATE = 3.0  # kernel radius in sigmas: the Gaussian tail beyond 3 sigma is < 0.3 %
CUTMIX_MAX_ROUNDS = 100  # rejection rounds before an oversized box is clipped to the crop
LINEAR_SUPPORT = 1  # source pixels a linear interpolation reads beyond its sample point


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def epoch_order(*, num_samples: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    """The global permutation of epoch ``epoch``: the same on every rank."""
    return _rng(seed, stream, epoch).permutation(num_samples)


def per_rank(num_samples: int, world_size: int) -> int:
    """Samples each rank takes from one permutation (equal on all ranks)."""
    return num_samples // world_size


def rank_indices(order: np.ndarray, *, rank: int, world_size: int) -> np.ndarray:
    return order[rank::world_size][: per_rank(len(order), world_size)]


def epoch_batch(*, num_samples: int, seed: int, stream: int, epoch: int, step: int, batch_size: int,
                rank: int, world_size: int) -> np.ndarray:
    """Sample indices of batch ``step`` of ``epoch`` when the split defines the epoch."""
    mine = rank_indices(epoch_order(num_samples=num_samples, seed=seed, stream=stream, epoch=epoch),
                        rank=rank, world_size=world_size)
    return mine[step * batch_size: (step + 1) * batch_size]


def stream_batch(*, num_samples: int, seed: int, stream: int, position: int, batch_size: int,
                 rank: int, world_size: int) -> np.ndarray:
    """Sample indices at ``position .. position+batch_size`` of an endless stream made of
    consecutive epochs of the split (the labeled set while the unlabeled set defines epochs)."""
    n = per_rank(num_samples, world_size)
    out = np.empty(batch_size, dtype=np.int64)
    cache: dict[int, np.ndarray] = {}
    for j in range(batch_size):
        cycle, within = divmod(position + j, n)
        if cycle not in cache:
            cache[cycle] = rank_indices(epoch_order(num_samples=num_samples, seed=seed, stream=stream,
                                                    epoch=cycle), rank=rank, world_size=world_size)
        out[j] = cache[cycle][within]
    return out


# ---------------------------------------------------------------------------------------------
# random parameters


@dataclass(frozen=True)
class Geometry:
    """Scale / crop / flip of a batch. The crop is taken from the image scaled by ``scale``,
    padded on the bottom/right to at least crop x crop, and then flipped as a whole. Only the
    source region under the crop window is decoded (``decode_*``, with a margin for the
    interpolation filter) and resized (``roi_*``, relative to the decoded region, to an output
    of ``valid`` pixels)."""

    scale: np.ndarray  # (B,) drawn scale factor
    decode_start: np.ndarray  # (B, 2) int32 (y, x) in source pixels
    decode_shape: np.ndarray  # (B, 2) int32 (h, w)
    roi_start: np.ndarray  # (B, 2) float32 (y, x) relative to decode_start
    roi_end: np.ndarray  # (B, 2) float32
    valid: np.ndarray  # (B, 2) int64 (rows, cols) of image inside the crop, before flipping
    flip: np.ndarray  # (B,) bool


def draw_geometry(rng: np.random.Generator, *, sizes: np.ndarray, crop: int, aug: AugConfig) -> Geometry:
    """``sizes`` (B, 2) holds (height, width) of each source image."""
    n = len(sizes)
    scale = rng.uniform(aug.scale_min, aug.scale_max, size=n)
    scaled = np.maximum(1, np.floor(sizes * scale[:, None] + 0.5)).astype(np.int64)
    # Crop position uniform over the padded scaled image, as a pad-then-random-crop would draw it.
    start = rng.integers(0, np.maximum(scaled, crop) - crop + 1)
    valid = np.minimum(scaled - start, crop)
    # The effective per-axis scale is the rounded one, so the ROI maps exactly onto the pixels a
    # full resize to `scaled` followed by the crop would have produced.
    factor = scaled / sizes
    flip = rng.random(n) < aug.flip_prob
    roi_start, roi_end = start / factor, (start + valid) / factor
    # The linear filter reads up to 1/factor source pixels beyond the ROI when downscaling
    # (antialiasing) and one pixel when upscaling; decoding that margin keeps the result equal
    # to resizing the whole image.
    margin = np.ceil(1.0 / np.minimum(factor, 1.0)).astype(np.int64) + LINEAR_SUPPORT
    lo = np.maximum(np.floor(roi_start).astype(np.int64) - margin, 0)
    hi = np.minimum(np.ceil(roi_end).astype(np.int64) + margin, sizes)
    return Geometry(scale=scale.astype(np.float32), decode_start=lo.astype(np.int32),
                    decode_shape=(hi - lo).astype(np.int32), roi_start=(roi_start - lo).astype(np.float32),
                    roi_end=(roi_end - lo).astype(np.float32), valid=valid, flip=flip)


# Hue rotation and saturation act on the chroma plane of YIQ (the model of DALI's color_twist
# and of the colour-jitter in many GPU pipelines); conjugated back to RGB they are one 3x3 matrix.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


def colour_matrix(saturation: float, hue_degrees: float) -> np.ndarray:
    """RGB -> RGB matrix scaling chroma by ``saturation`` and rotating it by ``hue_degrees``.
    Saturation 0 maps every channel to the luma: grayscale."""
    h = math.radians(hue_degrees)
    c, s = saturation * math.cos(h), saturation * math.sin(h)
    chroma = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return (YIQ_TO_RGB @ chroma @ RGB_TO_YIQ).astype(np.float32)


@dataclass(frozen=True)
class Photometric:
    """Per-sample strong-view parameters. ``colour`` gates the colour branch: it runs when
    jitter or grayscale is drawn. Brightness and contrast are applied first, then ``mix``, the
    saturation/hue matrix (saturation 0 when grayscale is drawn: the luma of the jittered
    image)."""

    colour: np.ndarray  # (B,) bool
    jitter: np.ndarray  # (B,) bool
    gray: np.ndarray  # (B,) bool
    brightness: np.ndarray  # (B,) float32 factors, 1 = unchanged
    contrast: np.ndarray
    saturation: np.ndarray
    hue: np.ndarray  # (B,) degrees
    mix: np.ndarray  # (B, 3, 3) float32, out_rgb = mix @ in_rgb
    blur: np.ndarray  # (B,) bool
    sigma: np.ndarray  # (B,) float32


def _factor(rng: np.random.Generator, strength: float, n: int) -> np.ndarray:
    return rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=n)


def draw_photometric(rng: np.random.Generator, *, n: int, aug: AugConfig) -> Photometric:
    jitter = rng.random(n) < aug.jitter_prob
    brightness = _factor(rng, aug.brightness, n)
    contrast = _factor(rng, aug.contrast, n)
    saturation = _factor(rng, aug.saturation, n)
    hue = rng.uniform(-aug.hue, aug.hue, size=n) * HUE_DEGREES
    gray = rng.random(n) < aug.grayscale_prob
    blur = rng.random(n) < aug.blur_prob
    sigma = rng.uniform(aug.blur_sigma_min, aug.blur_sigma_max, size=n)
    ones = np.ones(n)
    f32 = np.float32
    saturation = np.where(gray, 0.0, np.where(jitter, saturation, ones))
    hue = np.where(jitter & ~gray, hue, 0.0)
    return Photometric(
        colour=jitter | gray, jitter=jitter, gray=gray,
        brightness=np.where(jitter, brightness, ones).astype(f32),
        contrast=np.where(jitter, contrast, ones).astype(f32),
        saturation=saturation.astype(f32), hue=hue.astype(f32),
        mix=np.stack([colour_matrix(float(s), float(h)) for s, h in zip(saturation, hue)]),
        blur=blur, sigma=sigma.astype(f32))


def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian, radius ceil(3 sigma): the blur is separable, two 1-D passes."""
    radius = max(1, math.ceil(BLUR_TRUNCATE * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


@dataclass(frozen=True)
class CutMixBoxes:
    """Per-sample CutMix boxes in crop coordinates; ``apply`` False means no box."""

    apply: np.ndarray  # (B,) bool
    top_left: np.ndarray  # (B, 2) int64 (y, x)
    extent: np.ndarray  # (B, 2) int64 (h, w)


def draw_cutmix(rng: np.random.Generator, *, n: int, crop: int, aug: AugConfig) -> CutMixBoxes:
    """UniMatch's box (``obtain_cutmix_box`` in its dataset/transform.py): area uniform in
    [min, max] of the crop, drawn once; then aspect r = h/w uniform in [a, 1/a], h = int(sqrt(area
    r)), w = int(sqrt(area / r)) and a top-left corner uniform over the whole crop, all three
    redrawn until the box fits. The rejection favours smaller extents near the border, as the
    source's does; the draws are vectorised over the batch (host numpy, no DALI cost)."""
    apply = rng.random(n) < aug.cutmix_prob
    area = rng.uniform(aug.cutmix_area_min, aug.cutmix_area_max, size=n) * crop * crop
    extent = np.ones((n, 2), dtype=np.int64)
    top_left = np.zeros((n, 2), dtype=np.int64)
    todo = np.arange(n)
    for _ in range(CUTMIX_MAX_ROUNDS):
        ratio = rng.uniform(aug.cutmix_aspect_min, 1.0 / aug.cutmix_aspect_min, size=len(todo))
        hw = np.stack([np.sqrt(area[todo] * ratio), np.sqrt(area[todo] / ratio)], axis=1).astype(np.int64)
        yx = rng.integers(0, crop, size=(len(todo), 2))
        fits = (yx + hw <= crop).all(axis=1)
        extent[todo[fits]], top_left[todo[fits]] = np.maximum(hw[fits], 1), yx[fits]
        todo = todo[~fits]
        if len(todo) == 0:
            break
    if len(todo):  # practically unreachable (the largest boxes fit a round in about 1 of 10): clip
        extent[todo] = np.minimum(np.maximum(hw[~fits], 1), crop)
        top_left[todo] = 0
    return CutMixBoxes(apply=apply, top_left=top_left, extent=extent)
