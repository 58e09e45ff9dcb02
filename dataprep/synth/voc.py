"""Synthetic VOC-like scenes: a few object classes, each a shape family with its own texture
and colour distribution, on backgrounds whose kind (street, nature, indoor) makes some
classes likelier than others: context a segmenter can learn, and the FOrec method exploits.

Deliberately not trivial: colour ranges of classes overlap, background distractors borrow
object colours, objects are rotated, scaled, mirrored, cut by the border and occlude each
other, and the image is blurred, noisy and JPEG-compressed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastforec.labels import IGNORE_INDEX, VOC_CLASS_NAMES

from .common import PlacedObject, boundary_band, finish_image, paint_object
from .shapes import Part, Placement, chamfered_rect, ellipse, poly, rect
from .textures import Rng, blend, hsv, shade, smooth_noise, stripes, vertical_ramp

BIRD, CAR, CAT, PERSON, PLANT = (VOC_CLASS_NAMES.index(n) for n in ("bird", "car", "cat", "person", "pottedplant"))
SYNTH_CLASSES = (BIRD, CAR, CAT, PERSON, PLANT)
# VOC's void band is ~5 px wide on ~375x500 images.
BAND_HALF_WIDTH_FRACTION = 0.006
OBJECT_COUNT_PROBS = {1: 0.25, 2: 0.35, 3: 0.25, 4: 0.15}
MAX_DISTRACTORS = 2
# Share of objects drawn regardless of the scene: context is a strong hint, not a rule.
OFF_CONTEXT_PROB = 0.2


# ---------------------------------------------------------------- shape families (local coords)

def car_parts(rng: Rng) -> list[Part]:
    top = rng.uniform(-0.68, -0.5)
    shift = rng.uniform(-0.15, 0.15)
    body_top = rng.uniform(-0.22, -0.08)
    parts = [Part(chamfered_rect(-1.0, body_top, 1.0, 0.42, cut=0.12), 0),
             Part(poly((-0.6 + shift, body_top), (-0.38 + shift, top), (0.38 + shift, top),
                       (0.62 + shift, body_top)), 0),
             Part(poly((-0.5 + shift, body_top - 0.04), (-0.33 + shift, top + 0.07), (0.33 + shift, top + 0.07),
                       (0.52 + shift, body_top - 0.04)), 1)]
    for x in (-0.6, 0.6):
        parts.append(Part(ellipse(x, 0.42, 0.21, 0.21), 2))
        parts.append(Part(ellipse(x, 0.42, 0.08, 0.08), 3))
    return parts


def person_parts(rng: Rng) -> list[Part]:
    spread = rng.uniform(0.0, 0.12)
    arm_l, arm_r = rng.uniform(-0.15, 0.25, size=2)
    return [Part(poly((-0.24, -0.6), (-0.33, -0.58), (-0.36 - arm_l, 0.08), (-0.27 - arm_l, 0.1)), 0),
            Part(poly((0.24, -0.6), (0.33, -0.58), (0.36 + arm_r, 0.08), (0.27 + arm_r, 0.1)), 0),
            Part(poly((-0.21, 0.08), (-0.02, 0.08), (-0.04 - spread, 0.93), (-0.22 - spread, 0.93)), 2),
            Part(poly((0.02, 0.08), (0.21, 0.08), (0.22 + spread, 0.93), (0.04 + spread, 0.93)), 2),
            Part(chamfered_rect(-0.25, -0.64, 0.25, 0.14, cut=0.06), 0),
            Part(ellipse(0.0, -0.8, 0.13, 0.16), 1),
            Part(rect(-0.26 - spread, 0.9, -0.02 - spread, 1.0), 3),
            Part(rect(0.02 + spread, 0.9, 0.26 + spread, 1.0), 3)]


def bird_parts(rng: Rng) -> list[Part]:
    wing_up = rng.uniform(-0.9, -0.3)
    return [Part(poly((-0.5, 0.0), (-1.0, -0.18), (-0.95, 0.22)), 0),
            Part(ellipse(0.0, 0.0, 0.6, 0.27, angle=-0.1), 0),
            Part(ellipse(0.55, -0.22, 0.18, 0.17), 0),
            Part(poly((0.68, -0.27), (0.95, -0.2), (0.68, -0.13)), 1),
            Part(poly((-0.35, -0.05), (0.25, -0.08), (-0.45, wing_up)), 2),
            Part(ellipse(0.6, -0.26, 0.04, 0.04), 3)]


def cat_parts(rng: Rng) -> list[Part]:
    tail = rng.uniform(-0.9, -0.2)
    parts = [Part(poly((-0.55, 0.0), (-0.95, tail), (-0.85, tail - 0.05), (-0.5, 0.12)), 0)]
    for x in (-0.45, -0.25, 0.25, 0.45):
        parts.append(Part(rect(x - 0.07, 0.2, x + 0.07, 0.62), 0))
    parts += [Part(ellipse(0.0, 0.1, 0.62, 0.3), 0),
              Part(poly((0.42, -0.35), (0.48, -0.7), (0.62, -0.45)), 0),
              Part(poly((0.66, -0.45), (0.8, -0.7), (0.86, -0.35)), 0),
              Part(ellipse(0.64, -0.25, 0.26, 0.24), 0),
              Part(ellipse(0.56, -0.3, 0.05, 0.04), 1),
              Part(ellipse(0.74, -0.3, 0.05, 0.04), 1)]
    return parts


def plant_parts(rng: Rng) -> list[Part]:
    parts = []
    for _ in range(int(rng.integers(6, 12))):
        r, a = 0.45 * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        parts.append(Part(ellipse(r * np.cos(a), -0.3 + 0.8 * r * np.sin(a), rng.uniform(0.15, 0.35),
                                  rng.uniform(0.06, 0.14), angle=rng.uniform(0, np.pi)), 0))
    parts += [Part(poly((-0.32, 0.3), (0.32, 0.3), (0.24, 1.0), (-0.24, 1.0)), 1),
              Part(rect(-0.37, 0.24, 0.37, 0.38), 2)]
    return parts


# ---------------------------------------------------------------- appearance (per part)

def _fill(partmap: np.ndarray, colours: dict[int, np.ndarray]) -> np.ndarray:
    out = np.zeros(partmap.shape + (3,), dtype=np.float32)
    for part, img in colours.items():
        sel = partmap == 1 + part
        out[sel] = img[sel]
    return out


def _flat(rng: Rng, shape: tuple[int, int], colour: np.ndarray, noise: float = 0.08) -> np.ndarray:
    return shade(colour, smooth_noise(rng, *shape, cells=4), noise)


# Each class has a typical hue band (a strong cue, which a small network picks up within a few
# hundred steps), but OFF_PALETTE_PROB of the instances take any colour, so shape and texture
# are needed too.
OFF_PALETTE_PROB = 0.15
HUE_JITTER = 0.03


def class_colour(rng: Rng, hues: tuple[float, ...], *, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    if rng.uniform() < OFF_PALETTE_PROB:
        return hsv(rng.uniform(), rng.uniform(0.0, 0.9), rng.uniform(0.15, 0.95))
    hue = float(rng.choice(hues)) + rng.uniform(-HUE_JITTER, HUE_JITTER)
    return hsv(hue, rng.uniform(*s), rng.uniform(*v))


CAR_HUES = (0.0, 0.6)  # red or blue bodies
SHIRT_HUES = (0.8,)  # purple / magenta
BIRD_HUES = (0.12,)  # yellow-brown
CAT_HUES = (0.07,)  # orange
LEAF_HUES = (0.3,)


def paint_car(rng: Rng, partmap: np.ndarray) -> np.ndarray:
    h, w = partmap.shape
    body = class_colour(rng, CAR_HUES, s=(0.7, 0.95), v=(0.55, 0.9))
    ramp = vertical_ramp(h, w)
    highlight = np.exp(-((ramp - rng.uniform(0.3, 0.5)) ** 2) / 0.01)  # a glossy band along the body
    glass = shade(hsv(0.58, 0.25, 0.3), stripes(h, w, period=max(4.0, w / 6), angle=0.8, phase=0.0), 0.4)
    return _fill(partmap, {0: shade(body, highlight - 0.3 * ramp, 0.5), 1: glass,
                           2: _flat(rng, (h, w), np.full(3, 0.07, np.float32)),
                           3: _flat(rng, (h, w), np.full(3, 0.6, np.float32))})


def paint_person(rng: Rng, partmap: np.ndarray) -> np.ndarray:
    h, w = partmap.shape
    shirt = class_colour(rng, SHIRT_HUES, s=(0.5, 0.9), v=(0.45, 0.85))
    shirt_img = _flat(rng, (h, w), shirt)
    if rng.uniform() < 0.5:
        shirt_img = shade(shirt, stripes(h, w, period=max(3.0, h / 14), angle=np.pi / 2, phase=0.0), 0.35)
    skin = hsv(rng.uniform(0.03, 0.09), rng.uniform(0.3, 0.6), rng.uniform(0.4, 0.95))
    trousers = hsv(rng.choice([0.6, 0.1, 0.0]), rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.5))
    return _fill(partmap, {0: shirt_img, 1: _flat(rng, (h, w), skin, 0.05), 2: _flat(rng, (h, w), trousers, 0.15),
                           3: _flat(rng, (h, w), np.full(3, 0.1, np.float32))})


def paint_bird(rng: Rng, partmap: np.ndarray) -> np.ndarray:
    h, w = partmap.shape
    base = class_colour(rng, BIRD_HUES, s=(0.5, 0.9), v=(0.5, 0.9))
    feathers = stripes(h, w, period=rng.uniform(2.5, 5.0), angle=rng.uniform(0, np.pi), phase=0.0)
    texture = 0.6 * feathers + 0.4 * smooth_noise(rng, h, w, cells=6)
    return _fill(partmap, {0: shade(base, texture, 0.35), 1: _flat(rng, (h, w), hsv(0.09, 0.9, 0.9)),
                           2: shade(base * 0.6, texture, 0.45), 3: np.zeros((h, w, 3), np.float32)})


def paint_cat(rng: Rng, partmap: np.ndarray) -> np.ndarray:
    h, w = partmap.shape
    base = class_colour(rng, CAT_HUES, s=(0.6, 0.85), v=(0.7, 0.9))
    tabby = stripes(h, w, period=max(4.0, w / rng.uniform(6, 10)), angle=rng.uniform(-0.3, 0.3), phase=0.0)
    fur = np.clip(tabby, -0.2, 1.0) + 0.3 * smooth_noise(rng, h, w, cells=10)
    return _fill(partmap, {0: shade(base, fur, -0.4), 1: _flat(rng, (h, w), hsv(0.25, 0.8, 0.7))})


def paint_plant(rng: Rng, partmap: np.ndarray) -> np.ndarray:
    h, w = partmap.shape
    leaf = class_colour(rng, LEAF_HUES, s=(0.5, 0.9), v=(0.3, 0.7))
    veins = stripes(h, w, period=rng.uniform(3.0, 6.0), angle=rng.uniform(0, np.pi), phase=0.0)
    pot = hsv(rng.choice([0.05, 0.55, 0.0]), rng.uniform(0.4, 0.7), rng.uniform(0.45, 0.75))
    pot_img = shade(pot, stripes(h, w, period=max(4.0, h / 8), angle=np.pi / 2, phase=0.0), 0.15)
    return _fill(partmap, {0: shade(leaf, 0.5 * veins + smooth_noise(rng, h, w, cells=8), 0.35), 1: pot_img,
                           2: shade(pot * 0.85, smooth_noise(rng, h, w, cells=3), 0.1)})


@dataclass(frozen=True)
class ObjectDesign:
    class_id: int
    parts: Callable[[Rng], list[Part]]
    painter: Callable[[Rng, np.ndarray], np.ndarray]
    size: tuple[float, float]  # object extent (2 local units) as a fraction of the short side
    max_angle: float  # radians
    grounded: bool  # stands on the ground plane, or flies
    bottom: float  # local y of the lowest point (where a grounded object touches the ground)


DESIGNS = {
    CAR: ObjectDesign(CAR, car_parts, paint_car, (0.55, 1.1), 0.12, True, 0.63),
    PERSON: ObjectDesign(PERSON, person_parts, paint_person, (0.55, 1.0), 0.15, True, 1.0),
    BIRD: ObjectDesign(BIRD, bird_parts, paint_bird, (0.4, 0.8), 0.8, False, 0.3),
    CAT: ObjectDesign(CAT, cat_parts, paint_cat, (0.5, 1.0), 0.25, True, 0.62),
    PLANT: ObjectDesign(PLANT, plant_parts, paint_plant, (0.5, 0.9), 0.1, True, 1.0),
}


# ---------------------------------------------------------------- scenes (background + context)

@dataclass(frozen=True)
class SceneKind:
    name: str
    class_probs: dict[int, float]
    horizon: tuple[float, float]  # fraction of the height


SCENES = (
    SceneKind("street", {CAR: 0.45, PERSON: 0.35, PLANT: 0.1, CAT: 0.05, BIRD: 0.05}, (0.35, 0.55)),
    SceneKind("nature", {BIRD: 0.45, CAT: 0.2, PERSON: 0.15, PLANT: 0.15, CAR: 0.05}, (0.45, 0.7)),
    SceneKind("indoor", {CAT: 0.35, PLANT: 0.35, PERSON: 0.2, BIRD: 0.05, CAR: 0.05}, (0.6, 0.8)),
)


def _street(rng: Rng, h: int, w: int, hy: int) -> np.ndarray:
    sky = blend(np.broadcast_to(hsv(0.58, 0.15, 0.85), (h, w, 3)), np.broadcast_to(hsv(0.6, 0.3, 0.65), (h, w, 3)),
                1.0 - vertical_ramp(h, w))
    img = sky.copy()
    # building silhouettes with window grids along the horizon
    windows = np.maximum(stripes(h, w, period=max(4.0, w / 30), angle=0.0, phase=0.0),
                         stripes(h, w, period=max(4.0, h / 20), angle=np.pi / 2, phase=0.0)) > 0.6
    x = 0
    while x < w:
        bw = int(rng.uniform(0.1, 0.3) * w) + 1
        top = int(rng.uniform(0.05, 0.8) * hy)
        facade = hsv(rng.uniform(0.0, 0.12), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.75))
        img[top:hy, x:x + bw] = shade(facade, windows[top:hy, x:x + bw] * np.float32(-1.0), 0.4)
        x += bw
    asphalt = shade(hsv(0.0, 0.0, rng.uniform(0.3, 0.45)), smooth_noise(rng, h, w, cells=12), 0.15)
    asphalt = asphalt + rng.normal(0.0, 0.04, size=(h, w, 1)).astype(np.float32)
    img[hy:] = asphalt[hy:]
    lane = (np.abs(np.arange(w) - w * rng.uniform(0.3, 0.7)) < max(1, w // 100))[None, :] \
        & ((np.arange(h) // max(2, h // 12)) % 2 == 0)[:, None]
    img[hy:][lane[hy:]] = 0.9
    return img


def _nature(rng: Rng, h: int, w: int, hy: int) -> np.ndarray:
    sky = shade(hsv(rng.uniform(0.55, 0.62), rng.uniform(0.35, 0.6), 0.9), 0.3 * vertical_ramp(h, w), 1.0)
    clouds = np.clip(smooth_noise(rng, h, w, cells=5) * 2.0 - 0.6, 0.0, 1.0)
    img = blend(sky, np.ones((h, w, 3), np.float32) * 0.95, clouds)
    grass = hsv(rng.uniform(0.18, 0.32), rng.uniform(0.4, 0.8), rng.uniform(0.3, 0.6))
    blades = stripes(h, w, period=rng.uniform(2.0, 4.0), angle=rng.uniform(-0.2, 0.2), phase=0.0)
    img[hy:] = shade(grass, 0.4 * blades + smooth_noise(rng, h, w, cells=8), 0.3)[hy:]
    return img


def _indoor(rng: Rng, h: int, w: int, hy: int) -> np.ndarray:
    wall = hsv(rng.uniform(), rng.uniform(0.1, 0.35), rng.uniform(0.6, 0.9))
    pattern = stripes(h, w, period=max(6.0, w / rng.uniform(8, 25)), angle=0.0, phase=0.0) \
        if rng.uniform() < 0.5 else smooth_noise(rng, h, w, cells=6)
    img = shade(wall, pattern, 0.12)
    wood = hsv(rng.uniform(0.06, 0.1), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.65))
    grain = stripes(h, w, period=rng.uniform(3.0, 7.0), angle=np.pi / 2 + rng.uniform(-0.05, 0.05), phase=0.0)
    img[hy:] = shade(wood, 0.5 * grain + 0.5 * smooth_noise(rng, h, w, cells=10), 0.3)[hy:]
    return img


BACKGROUNDS = {"street": _street, "nature": _nature, "indoor": _indoor}


def _distractor(rng: Rng, image: np.ndarray, short: int) -> None:
    """Background clutter (label stays background) in colours that objects use too."""
    h, w = image.shape[:2]
    size = rng.uniform(0.05, 0.25) * short
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    part = [Part(ellipse(0, 0, 1.0, rng.uniform(0.3, 1.0)) if rng.uniform() < 0.5 else rect(-1, -0.6, 1, 0.6), 0)]
    colour = hsv(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.9))  # muted, like most clutter
    obj = PlacedObject(0, part, Placement(cx, cy, size, rng.uniform(0, np.pi), False),
                       lambda r, pm: shade(colour, smooth_noise(r, *pm.shape, cells=3), 0.25))
    scratch = np.zeros((h, w), np.uint8)
    paint_object(image, scratch, obj, rng)


def _place(rng: Rng, design: ObjectDesign, *, h: int, w: int, hy: int) -> Placement:
    short = min(h, w)
    scale = rng.uniform(*design.size) * short / 2.0
    angle = rng.uniform(-design.max_angle, design.max_angle)
    cx = rng.uniform(-0.05 * w, 1.05 * w)
    if design.grounded:
        depth = rng.uniform(0.0, 1.0)  # 0 at the horizon, 1 at the bottom edge
        scale *= 0.6 + 0.5 * depth
        ground_y = hy + depth * (h - hy) + rng.uniform(0.0, 0.1) * h
        cy = ground_y - design.bottom * scale
    else:
        cy = rng.uniform(0.1 * h, max(0.15 * h, hy))
    return Placement(cx, cy, scale, angle, bool(rng.integers(2)))


def render_voc_scene(rng: Rng, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, uint8 class map with 255 boundary band) for one synthetic sample."""
    h, w = size
    scene = SCENES[int(rng.integers(len(SCENES)))]
    hy = int(rng.uniform(*scene.horizon) * h)
    image = BACKGROUNDS[scene.name](rng, h, w, hy).astype(np.float32)
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(0, MAX_DISTRACTORS + 1))):
        _distractor(rng, image, min(h, w))
    counts = list(OBJECT_COUNT_PROBS)
    n = int(rng.choice(counts, p=list(OBJECT_COUNT_PROBS.values())))
    classes, probs = list(scene.class_probs), np.array(list(scene.class_probs.values()))
    objects = []
    for _ in range(n):
        cls = int(rng.choice(SYNTH_CLASSES)) if rng.uniform() < OFF_CONTEXT_PROB else int(rng.choice(classes, p=probs))
        design = DESIGNS[cls]
        placement = _place(rng, design, h=h, w=w, hy=hy)
        objects.append(PlacedObject(cls, design.parts(rng), placement, design.painter))
    # far (higher up) first, so nearer objects occlude them
    for obj in sorted(objects, key=lambda o: o.placement.cy + DESIGNS[o.class_id].bottom * o.placement.scale):
        paint_object(image, label, obj, rng)
    band = max(1, round(BAND_HALF_WIDTH_FRACTION * min(h, w)))
    return finish_image(rng, image), boundary_band(label, width=band, ignore=IGNORE_INDEX)
