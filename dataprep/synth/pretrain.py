"""The ``pretrain`` preset: a labeled source disjoint from sslbench, to pretrain its encoder.

Why it exists: every peer method starts from an ImageNet-pretrained encoder, and sslbench's
from-scratch regime may answer another question than the one users ask (issue 34). ImageNet
cannot be downloaded here and would not fit the CPU budget, so this preset plays its part for
sslbench: a large, fully labeled synthetic set whose classes and textures sslbench never shows.

- classes: the 10 VOC classes sslbench does not use (bicycle, cow, diningtable, dog, horse,
  motorbike, pottedplant, sheep, sofa, train), each its own silhouette; no shape builder is
  shared with sslbench (or with the ``scenes`` preset);
- textures: a pool of ``STYLE_POOL_SIZE`` styles of other pattern kinds than sslbench's
  (``PATTERN_KINDS``: rings, zigzag, speckle, gradient; sslbench uses stripes, checker, dots
  and blobs), so no pretraining style is an sslbench style;
- every object wears a style drawn uniformly from the whole pool, whatever its class: only the
  silhouette tells the classes apart (as on sslbench's shared styles); backgrounds and clutter
  are painted from the same pool at lower contrast;
- colours are not made disjoint: sslbench's styles cover every hue (their second colours at any
  hue offset), so a source without them would be colour-blind where sslbench is not, the way no
  natural image set avoids another one's colours;
- 1-4 objects per image over a wider size range than sslbench's, every training image labeled
  (dense labels: what a segmentation encoder is pretrained on transfers best to segmentation).

Like every synthetic tree it is deterministic from the seed (each image from its own seed-and-id
RNG, whatever the number of workers).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from fastforec.labels import IGNORE_INDEX, VOC_CLASS_NAMES

from .common import PlacedObject, boundary_band, finish_image, paint_object
from .shapes import Part, chamfered_rect, ellipse, poly, random_placement, random_polygon, rect
from .styles import Look, Style
from .textures import Rng, hsv, smooth_noise, stripes

PRESET = "pretrain"
STYLE_POOL_SIZE = 24
PATTERN_KINDS = ("rings", "zigzag", "speckle", "gradient")
OBJECT_COUNTS = (1, 2, 3, 4)
CLUTTER_COUNTS = (0, 1, 2, 3)
OBJECT_EXTENT = (0.35, 0.8)  # object size (2 local units) as a fraction of the image's short side
CLUTTER_EXTENT = (0.15, 0.45)
BACKGROUND_CONTRAST = 0.3
OBJECT_CONTRAST = 0.6
MAX_ANGLE = 0.3  # radians
CENTRE_MARGIN = 0.12
INSTANCE_TINT_JITTER = 0.04
INSTANCE_VALUE_JITTER = 0.1
SECONDARY_PART_SHADE = (1.0, 0.6, 0.35)  # parts 1, 2, 3: the style's second colour, darker
PATTERN_PERIOD = (0.12, 0.4)  # fraction of the image's short side
MIN_PERIOD_PX = 3.0
ZIGZAG_AMPLITUDE = 0.35  # of the period
SPECKLE_DENSITY = 2.0  # speckle grains per period (sslbench's blobs: one per two periods)
BAND_HALF_WIDTH_PX = 1
STYLE_TABLE_KEY = 0x9E_7A  # spawn key of the style pool's RNG (sslbench's is 0x55_1B)


# ---------------------------------------------------------------- shapes (local coords, y down)

def bicycle_parts(rng: Rng) -> list[Part]:
    r = rng.uniform(0.36, 0.44)
    return [Part(ellipse(-0.55, 0.45, r, r), 2), Part(ellipse(0.55, 0.45, r, r), 2),
            Part(poly((-0.55, 0.45), (-0.1, -0.25), (0.0, -0.1), (-0.45, 0.55)), 0),
            Part(poly((-0.1, -0.25), (0.45, -0.25), (0.45, -0.1), (0.0, -0.1)), 0),
            Part(poly((0.4, -0.5), (0.52, -0.5), (0.62, 0.45), (0.5, 0.45)), 0),
            Part(poly((-0.1, -0.1), (0.05, -0.1), (0.0, 0.5), (-0.15, 0.5)), 0),
            Part(rect(-0.3, -0.42, 0.0, -0.3), 1), Part(rect(0.3, -0.62, 0.72, -0.5), 1)]


def cow_parts(rng: Rng) -> list[Part]:
    drop = rng.uniform(0.0, 0.15)
    parts = [Part(chamfered_rect(-0.75, -0.35, 0.55, 0.25, cut=0.1), 0)]
    for x in (-0.65, -0.42, 0.25, 0.45):
        parts.append(Part(rect(x - 0.08, 0.2, x + 0.08, 0.8), 0))
    parts += [Part(poly((0.5, -0.3), (0.95, -0.1 + drop), (0.95, 0.15 + drop), (0.55, 0.1)), 0),
              Part(rect(0.82, -0.22 + drop, 1.0, 0.2 + drop), 1),
              Part(poly((0.62, -0.28), (0.7, -0.5), (0.76, -0.26)), 2),
              Part(poly((-0.75, -0.3), (-0.95, 0.35), (-0.88, 0.37), (-0.72, -0.1)), 0),
              Part(ellipse(-0.1, 0.3, 0.16, 0.1), 1)]
    return parts


def diningtable_parts(rng: Rng) -> list[Part]:
    top = rng.uniform(-0.35, -0.15)
    return [Part(rect(-1.0, top - 0.14, 1.0, top), 0), Part(rect(-0.95, top, 0.95, top + 0.1), 1),
            Part(rect(-0.85, top + 0.1, -0.7, 0.85), 2), Part(rect(0.7, top + 0.1, 0.85, 0.85), 2),
            Part(rect(-0.45, top + 0.1, -0.35, 0.7), 2), Part(rect(0.35, top + 0.1, 0.45, 0.7), 2)]


def dog_parts(rng: Rng) -> list[Part]:
    """A long low body on short legs, a long snout and a drooping ear (not sslbench's cat)."""
    tail = rng.uniform(-0.55, -0.25)
    parts = [Part(chamfered_rect(-0.85, -0.15, 0.45, 0.25, cut=0.12), 0)]
    for x in (-0.7, -0.5, 0.2, 0.38):
        parts.append(Part(rect(x - 0.07, 0.2, x + 0.07, 0.5), 0))
    parts += [Part(poly((-0.8, -0.1), (-1.0, tail), (-0.92, tail - 0.05), (-0.72, -0.12)), 0),
              Part(chamfered_rect(0.35, -0.5, 0.75, -0.05, cut=0.1), 0),
              Part(rect(0.7, -0.35, 1.0, -0.15), 0),
              Part(poly((0.38, -0.45), (0.52, -0.45), (0.48, 0.05), (0.38, 0.0)), 1),
              Part(ellipse(0.97, -0.3, 0.06, 0.05), 2)]
    return parts


def horse_parts(rng: Rng) -> list[Part]:
    neck = rng.uniform(0.0, 0.15)
    parts = [Part(ellipse(-0.1, -0.05, 0.62, 0.24), 0)]
    for x in (-0.55, -0.38, 0.2, 0.38):
        parts.append(Part(rect(x - 0.06, 0.1, x + 0.06, 0.95), 0))
        parts.append(Part(rect(x - 0.07, 0.88, x + 0.07, 1.0), 2))
    parts += [Part(poly((0.3, -0.2), (0.55 + neck, -0.85), (0.78 + neck, -0.8), (0.55, -0.05)), 0),
              Part(poly((0.55 + neck, -0.92), (0.98 + neck, -0.62), (0.9 + neck, -0.5), (0.55 + neck, -0.68)), 0),
              Part(poly((0.35, -0.25), (0.55 + neck, -0.9), (0.6 + neck, -0.82), (0.42, -0.15)), 1),
              Part(poly((-0.7, -0.15), (-1.0, 0.55), (-0.85, 0.6), (-0.65, 0.0)), 1)]
    return parts


def motorbike_parts(rng: Rng) -> list[Part]:
    r = rng.uniform(0.3, 0.36)
    return [Part(ellipse(-0.6, 0.5, r, r), 2), Part(ellipse(0.62, 0.5, r, r), 2),
            Part(poly((-0.6, 0.45), (-0.35, -0.05), (0.3, -0.05), (0.62, 0.45), (0.3, 0.5), (-0.3, 0.5)), 0),
            Part(chamfered_rect(-0.15, -0.35, 0.4, 0.0, cut=0.1), 0),
            Part(rect(-0.6, -0.22, -0.1, -0.08), 1),
            Part(poly((0.4, -0.3), (0.55, -0.6), (0.65, -0.55), (0.62, 0.45)), 1),
            Part(ellipse(0.62, 0.5, 0.1, 0.1), 3)]


def pottedplant_parts(rng: Rng) -> list[Part]:
    """A fan of pointed leaves on a wide bowl (the scenes preset's plant is a leafy ball on a pot)."""
    n = int(rng.integers(4, 7))
    spread = rng.uniform(0.9, 1.3)
    parts = []
    for i in range(n):
        a = -np.pi / 2 + spread * (i / (n - 1) - 0.5) * 2 * 0.6
        tip = np.array([np.cos(a), np.sin(a)]) * 0.95 + np.array([0.0, 0.2])
        side = np.array([-np.sin(a), np.cos(a)]) * 0.1
        parts.append(Part(poly((0.0, 0.2), tuple(0.5 * tip + side), tuple(tip), tuple(0.5 * tip - side)), 0))
    parts += [Part(poly((-0.55, 0.25), (0.55, 0.25), (0.35, 0.95), (-0.35, 0.95)), 1),
              Part(rect(-0.6, 0.18, 0.6, 0.32), 2)]
    return parts


def sheep_parts(rng: Rng) -> list[Part]:
    parts = []
    for x in (-0.5, -0.3, 0.2, 0.4):
        parts.append(Part(rect(x - 0.05, 0.15, x + 0.05, 0.8), 2))
    for cx, cy, r in ((-0.45, -0.05, 0.32), (-0.1, -0.18, 0.36), (0.25, -0.05, 0.32), (-0.2, 0.12, 0.34),
                      (0.1, 0.1, 0.3)):
        parts.append(Part(ellipse(cx, cy, r * rng.uniform(0.9, 1.1), r * rng.uniform(0.8, 1.0)), 0))
    parts += [Part(ellipse(0.68, -0.15, 0.2, 0.15, angle=0.4), 1), Part(ellipse(0.55, -0.3, 0.09, 0.05), 1)]
    return parts


def sofa_parts(rng: Rng) -> list[Part]:
    back = rng.uniform(-0.75, -0.55)
    return [Part(rect(-0.8, back, 0.8, 0.05), 1), Part(rect(-1.0, -0.15, -0.72, 0.55), 0),
            Part(rect(0.72, -0.15, 1.0, 0.55), 0), Part(rect(-0.75, 0.0, 0.75, 0.5), 0),
            Part(rect(-0.95, 0.55, -0.8, 0.72), 2), Part(rect(0.8, 0.55, 0.95, 0.72), 2)]


def train_parts(rng: Rng) -> list[Part]:
    """A steam engine: boiler, tall cab, chimney, a row of small wheels (not sslbench's bus)."""
    parts = [Part(chamfered_rect(-0.4, -0.25, 1.0, 0.3, cut=0.2), 0), Part(rect(-1.0, -0.8, -0.35, 0.3), 0),
             Part(rect(-0.88, -0.65, -0.5, -0.3), 1), Part(rect(0.55, -0.7, 0.75, -0.2), 2),
             Part(rect(-1.0, 0.3, 1.0, 0.42), 2)]
    n = int(rng.integers(3, 5))
    for i in range(n):
        x = -0.8 + 1.6 * (i + 0.5) / n
        parts.append(Part(ellipse(x, 0.55, 0.17, 0.17), 2))
    return parts


CLASS_SHAPES = {name: fn for name, fn in (
    ("bicycle", bicycle_parts), ("cow", cow_parts), ("diningtable", diningtable_parts), ("dog", dog_parts),
    ("horse", horse_parts), ("motorbike", motorbike_parts), ("pottedplant", pottedplant_parts),
    ("sheep", sheep_parts), ("sofa", sofa_parts), ("train", train_parts))}
PRETRAIN_CLASSES: tuple[int, ...] = tuple(VOC_CLASS_NAMES.index(n) for n in CLASS_SHAPES)
_SHAPE_OF = {VOC_CLASS_NAMES.index(n): fn for n, fn in CLASS_SHAPES.items()}


# ---------------------------------------------------------------- the style pool

def style_table(seed: int) -> tuple[Style, ...]:
    """The pool (a function of the dataset seed): hues spread over the circle, kinds in turn."""
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(STYLE_TABLE_KEY,)))
    styles = []
    for i in range(STYLE_POOL_SIZE):
        hue = (i / STYLE_POOL_SIZE + rng.uniform(-0.02, 0.02)) % 1.0
        a = tuple(float(v) for v in hsv(hue, rng.uniform(0.2, 1.0), rng.uniform(0.45, 1.0)))
        b = tuple(float(v) for v in hsv(hue + rng.uniform(0.2, 0.8), rng.uniform(0.1, 1.0), rng.uniform(0.05, 0.55)))
        styles.append(Style(PATTERN_KINDS[i % len(PATTERN_KINDS)], a, b, float(rng.uniform(*PATTERN_PERIOD)),
                            float(rng.uniform(0.0, np.pi))))
    return tuple(styles)


def _pattern(style: Style, h: int, w: int, short: int, rng: Rng) -> np.ndarray:
    """An HxW field in [0, 1]: where colour_b shows through colour_a."""
    period = max(MIN_PERIOD_PX, style.period * short)
    if style.kind == "rings":  # concentric rings around a point anywhere near the crop
        cy, cx = rng.uniform(-0.5, 1.5) * h, rng.uniform(-0.5, 1.5) * w
        r = np.hypot(np.arange(h, dtype=np.float32)[:, None] - cy, np.arange(w, dtype=np.float32)[None, :] - cx)
        return (np.sin(r * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 2 * np.pi))) > 0) * 1.0
    if style.kind == "zigzag":  # stripes whose crests fold back and forth (a triangle wave)
        c, s = np.float32(np.cos(style.angle)), np.float32(np.sin(style.angle))
        yy, xx = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
        u, v = xx * c + yy * s, yy * c - xx * s
        tri = np.abs((v / np.float32(period)) % 2.0 - 1.0)
        return (np.sin((u + np.float32(ZIGZAG_AMPLITUDE * period) * tri) * np.float32(2 * np.pi / period)) > 0) * 1.0
    if style.kind == "speckle":  # fine granite-like grain
        cells = max(2, round(SPECKLE_DENSITY * max(h, w) / period))
        grain = smooth_noise(rng, h, w, cells=cells) + 0.5 * smooth_noise(rng, h, w, cells=2 * cells)
        return (grain > 0.2) * 1.0
    # gradient: a smooth ramp from one colour to the other, across the crop
    ramp = stripes(h, w, period=4.0 * period, angle=style.angle, phase=float(rng.uniform(0, 2 * np.pi)))
    return (ramp + 1.0) / 2.0


_place = partial(random_placement, margin=CENTRE_MARGIN, max_angle=MAX_ANGLE)
LOOK = Look(_pattern, value_jitter=INSTANCE_VALUE_JITTER, tint_jitter=INSTANCE_TINT_JITTER,
            secondary_shade=SECONDARY_PART_SHADE)


# ---------------------------------------------------------------- one image

def _clutter_parts(rng: Rng) -> list[Part]:
    """Irregular blobs and bars: background things without a class."""
    if rng.uniform() < 0.5:
        return [Part(rect(-1.0, -rng.uniform(0.1, 0.3), 1.0, rng.uniform(0.1, 0.3)), 0)]
    return [Part(random_polygon(rng, vertices=(4, 9), radius=(0.4, 1.0)), 0)]


def render_pretrain_scene(rng: Rng, size: tuple[int, int], styles: tuple[Style, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, uint8 class map with a 255 boundary band)."""
    h, w = size
    short = min(h, w)
    n = int(rng.choice(OBJECT_COUNTS))
    chosen = [(int(rng.choice(PRETRAIN_CLASSES)), int(rng.integers(len(styles)))) for _ in range(n)]
    used = {s for _, s in chosen}  # the background never wears an object's style in the same image
    background = styles[int(rng.choice([s for s in range(len(styles)) if s not in used]))]
    image = LOOK.paint(background, h, w, short, rng, contrast=BACKGROUND_CONTRAST)
    scratch = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.choice(CLUTTER_COUNTS))):
        clutter = PlacedObject(0, _clutter_parts(rng), _place(rng, CLUTTER_EXTENT, h, w),
                               LOOK.painter(styles[int(rng.integers(len(styles)))], short, contrast=OBJECT_CONTRAST))
        paint_object(image, scratch, clutter, rng)
    label = np.zeros((h, w), np.uint8)
    for cls, style in chosen:
        placed = PlacedObject(cls, _SHAPE_OF[cls](rng), _place(rng, OBJECT_EXTENT, h, w),
                              LOOK.painter(styles[style], short, contrast=OBJECT_CONTRAST))
        paint_object(image, label, placed, rng)
    return finish_image(rng, image), boundary_band(label, width=BAND_HALF_WIDTH_PX, ignore=IGNORE_INDEX)
