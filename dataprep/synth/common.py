"""Pieces shared by the synthetic VOC and Cityscapes scenes."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from .shapes import Part, Placement, rasterize
from .textures import Rng

# Softening and sensor noise are defined for a VOC-sized image and scaled with the short side,
# so a small demo image looks like a downscaled big one rather than a sharper one.
REFERENCE_SHORT_SIDE = 375.0
BLUR_RADIUS_AT_REFERENCE = 0.8
NOISE_SIGMA_RANGE = (0.01, 0.03)
GAIN_RANGE = (0.8, 1.15)
COLOUR_CAST = 0.04

Painter = Callable[[Rng, np.ndarray], np.ndarray]  # (rng, part map crop) -> RGB crop in [0, 1]


def sample_rng(seed: int, name: str) -> Rng:
    """An RNG that depends only on the dataset seed and the sample's id: samples can be made in
    any order, by any number of workers, with identical results."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(key,)))


def write_file(path: Path, data: bytes) -> None:
    """Write under a temporary name and rename, so an interrupted run leaves no half files."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class PlacedObject:
    class_id: int
    parts: list[Part]
    placement: Placement
    painter: Painter


def paint_object(image: np.ndarray, label: np.ndarray, obj: PlacedObject, rng: Rng) -> None:
    """Rasterise ``obj`` and paint it over ``image``/``label`` in place (so it occludes
    whatever was painted before)."""
    h, w = label.shape
    partmap = rasterize(obj.parts, obj.placement, (h, w))
    ys, xs = np.nonzero(partmap)
    if ys.size == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = partmap[y0:y1, x0:x1]
    inside = crop > 0
    texture = obj.painter(rng, crop)
    image[y0:y1, x0:x1][inside] = texture[inside]
    label[y0:y1, x0:x1][inside] = obj.class_id


def boundary_band(label: np.ndarray, *, width: int, ignore: int) -> np.ndarray:
    """VOC-style void band: pixels whose (2*width+1)^2 neighbourhood holds more than one class."""
    out = label.copy()
    ys, xs = np.nonzero(label)
    if ys.size == 0:
        return out
    # Only the objects' neighbourhood can change: filter that window, not the whole image.
    h, w = label.shape
    y0, y1 = max(0, ys.min() - width), min(h, ys.max() + width + 1)
    x0, x1 = max(0, xs.min() - width), min(w, xs.max() + width + 1)
    img = Image.fromarray(np.ascontiguousarray(label[y0:y1, x0:x1]))
    size = 2 * width + 1
    hi = np.asarray(img.filter(ImageFilter.MaxFilter(size)))
    lo = np.asarray(img.filter(ImageFilter.MinFilter(size)))
    out[y0:y1, x0:x1][hi != lo] = ignore
    return out


def finish_image(rng: Rng, image: np.ndarray) -> np.ndarray:
    """Camera-like finish: soft edges, exposure and white-balance jitter, sensor noise."""
    h, w = image.shape[:2]
    radius = BLUR_RADIUS_AT_REFERENCE * min(h, w) / REFERENCE_SHORT_SIDE
    img8 = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    soft = np.asarray(Image.fromarray(img8).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0
    gain = rng.uniform(*GAIN_RANGE) * (1.0 + rng.uniform(-COLOUR_CAST, COLOUR_CAST, size=3))
    noise = rng.standard_normal(size=soft.shape, dtype=np.float32) * np.float32(rng.uniform(*NOISE_SIGMA_RANGE))
    out = soft * gain.astype(np.float32) + noise
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_jpeg(image: np.ndarray, *, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(image: np.ndarray, *, palette: list[tuple[int, int, int]] | None = None) -> bytes:
    img = Image.fromarray(image)
    if palette is not None:
        img.putpalette([v for rgb in palette for v in rgb])  # 'L' becomes 'P', values kept as indices
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
