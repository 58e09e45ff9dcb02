"""The ``sslbench`` preset: a synthetic VOC-layout dataset made so that a few labels are not enough.

Why it exists: on the ``scenes`` preset 20 labels already saturate a small network, so unlabeled
data has nothing to add and a semi-supervised method cannot be told from supervised training.
Here the labels under-cover the appearance of the classes:

- 10 object classes, told apart only by their shape and part layout (an aeroplane is a long body
  with swept wings and a fin, a chair a seat with a back and legs, ...);
- their appearance comes from one pool of textures ("styles") shared across classes: every class
  has several styles, every style serves several classes, so colour and texture say little about
  the class. Within a class the styles have unequal frequencies (``STYLE_FREQUENCIES``), so a small
  labeled budget misses some (class, style) pairs that the unlabeled set shows;
- the backgrounds and the background clutter are painted from the same pool: the entanglement of
  object and background appearance that FOrec's foreground-only reconstruction is meant to undo;
- 2-4 objects per image, classes drawn uniformly (balanced frequencies).

Next to the official VOC tree it writes ``sslbench.json``: the style table, per image its objects'
(class, style) pairs, and one class-balanced ordering of the training ids. ``dataprep splits
--balanced --labeled B`` labels its first B ids, so budgets are nested (24 within 96) and every
training image has a label for the fully supervised reference.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from fastforec.labels import IGNORE_INDEX, VOC_CLASS_NAMES

from ..errors import DataprepError
from .common import PlacedObject, boundary_band, finish_image, paint_object
from .shapes import Part, chamfered_rect, ellipse, poly, random_placement, random_polygon, rect
from .styles import Look, Style
from .textures import Rng, hsv, smooth_noise, stripes
from .voc import bird_parts, car_parts, cat_parts

PRESET = "sslbench"
METADATA_FILE = "sslbench.json"
METADATA_FORMAT = 1
# A validation set this large puts one model's bootstrap standard error of mIoU well under a point
# (60 images gave about 2.7 points on the scenes preset); `fastforec ablate` uses it.
MIN_STUDY_VAL_IMAGES = 1500

STYLE_POOL_SIZE = 16
STYLES_PER_CLASS = 4
# How often a class wears each of its styles: its first ("signature") style is its own and most
# frequent, a cue a network picks up in a few hundred steps; the other three come from the shared
# part of the pool, and there only the silhouette tells the classes apart. Small budgets see few
# of those, the unlabeled set many.
STYLE_FREQUENCIES = (0.55, 0.15, 0.15, 0.15)
OBJECT_COUNTS = (2, 3, 4)
CLUTTER_COUNTS = (0, 1, 2)
OBJECT_EXTENT = (0.45, 0.7)  # object size (2 local units) as a fraction of the image's short side
CLUTTER_EXTENT = (0.2, 0.5)
# The background wears a pool style at this fraction of its pattern contrast: its colours are the
# objects' colours (the entanglement), but the scene still has a figure and a ground.
BACKGROUND_CONTRAST = 0.25
# Objects wear their style's pattern at this contrast: enough to make the style a cue, not so much
# that the pattern's edges hide the silhouette, which is what tells the classes apart.
OBJECT_CONTRAST = 0.5
MAX_ANGLE = 0.25  # radians
CENTRE_MARGIN = 0.15  # object centres stay this fraction of a side away from the border
INSTANCE_TINT_JITTER = 0.03
INSTANCE_VALUE_JITTER = 0.08
SECONDARY_PART_SHADE = (1.0, 0.55, 0.3)  # parts 1, 2, 3 of an object: its style's second colour, darker
PATTERN_KINDS = ("stripes", "checker", "dots", "blobs")
PATTERN_PERIOD = (0.15, 0.35)  # pattern period as a fraction of the image's short side
MIN_PERIOD_PX = 3.0
BAND_HALF_WIDTH_PX = 1


# ---------------------------------------------------------------- shapes (local coords, y down)

def aeroplane_parts(rng: Rng) -> list[Part]:
    sweep = rng.uniform(0.2, 0.4)
    return [Part(ellipse(0.0, 0.0, 1.0, 0.24), 0),
            Part(poly((0.25, -0.1), (-0.1 - sweep, -0.9), (-0.45 - sweep, -0.9), (-0.35, 0.0)), 0),
            Part(poly((0.25, 0.1), (-0.1 - sweep, 0.9), (-0.45 - sweep, 0.9), (-0.35, 0.0)), 0),
            Part(poly((-0.6, 0.0), (-0.9, -0.55), (-1.05, -0.55), (-0.95, 0.0)), 1),
            Part(ellipse(0.72, -0.04, 0.14, 0.07), 2)]


def boat_parts(rng: Rng) -> list[Part]:
    sail = rng.uniform(0.5, 0.8)
    return [Part(poly((-1.0, 0.35), (1.0, 0.35), (0.7, 0.8), (-0.7, 0.8)), 0),
            Part(rect(-0.05, -0.95, 0.05, 0.35), 2),
            Part(poly((0.1, -0.9), (0.1, 0.25), (0.1 + sail, 0.25)), 1),
            Part(poly((-0.1, -0.7), (-0.1, 0.25), (-0.1 - 0.7 * sail, 0.25)), 1)]


def bottle_parts(rng: Rng) -> list[Part]:
    half = rng.uniform(0.28, 0.36)
    return [Part(chamfered_rect(-half, -0.3, half, 1.0, cut=0.06), 0),
            Part(poly((-half, -0.3), (-0.1, -0.62), (0.1, -0.62), (half, -0.3)), 0),
            Part(rect(-0.1, -0.9, 0.1, -0.6), 0),
            Part(rect(-0.13, -1.0, 0.13, -0.86), 2),
            Part(rect(-half, 0.1, half, 0.5), 1)]


def bus_parts(rng: Rng) -> list[Part]:
    parts = [Part(chamfered_rect(-1.0, -0.55, 1.0, 0.4, cut=0.08), 0)]
    n = int(rng.integers(4, 6))
    step = 1.7 / n
    for i in range(n):
        x0 = -0.88 + i * step
        parts.append(Part(rect(x0, -0.42, x0 + 0.7 * step, -0.08), 1))
    for x in (-0.62, 0.62):
        parts.append(Part(ellipse(x, 0.42, 0.18, 0.18), 2))
    return parts


def chair_parts(rng: Rng) -> list[Part]:
    lean = rng.uniform(0.0, 0.15)
    return [Part(poly((-0.6 - lean, -1.0), (-0.3 - lean, -1.0), (-0.3, 0.05), (-0.6, 0.05)), 0),
            Part(rect(-0.6, -0.1, 0.65, 0.18), 0),
            Part(rect(-0.55, 0.18, -0.33, 1.0), 2),
            Part(rect(0.4, 0.18, 0.62, 1.0), 2),
            Part(rect(-0.52 - lean * 0.5, -0.85, -0.38 - lean * 0.5, -0.2), 1)]


def person_parts(rng: Rng) -> list[Part]:
    """A bold pictogram (the scenes preset's person has limbs too thin for 64-pixel images)."""
    spread = rng.uniform(0.0, 0.15)
    return [Part(ellipse(0.0, -0.78, 0.2, 0.2), 1),
            Part(chamfered_rect(-0.32, -0.55, 0.32, 0.25, cut=0.1), 0),
            Part(poly((-0.32, -0.5), (-0.5 - spread, 0.15), (-0.35 - spread, 0.2), (-0.22, -0.3)), 0),
            Part(poly((0.32, -0.5), (0.5 + spread, 0.15), (0.35 + spread, 0.2), (0.22, -0.3)), 0),
            Part(poly((-0.3, 0.22), (-0.02, 0.22), (-0.08 - spread, 1.0), (-0.34 - spread, 1.0)), 2),
            Part(poly((0.02, 0.22), (0.3, 0.22), (0.34 + spread, 1.0), (0.08 + spread, 1.0)), 2)]


def tvmonitor_parts(rng: Rng) -> list[Part]:
    wide = rng.uniform(0.85, 1.0)
    return [Part(rect(-wide, -0.75, wide, 0.45), 0),
            Part(rect(-wide + 0.12, -0.63, wide - 0.12, 0.33), 1),
            Part(rect(-0.08, 0.45, 0.08, 0.75), 2),
            Part(rect(-0.45, 0.75, 0.45, 0.88), 2)]


CLASS_SHAPES = {name: fn for name, fn in (
    ("aeroplane", aeroplane_parts), ("bird", bird_parts), ("boat", boat_parts), ("bottle", bottle_parts),
    ("bus", bus_parts), ("car", car_parts), ("cat", cat_parts), ("chair", chair_parts),
    ("person", person_parts), ("tvmonitor", tvmonitor_parts))}
SSLBENCH_CLASSES: tuple[int, ...] = tuple(VOC_CLASS_NAMES.index(n) for n in CLASS_SHAPES)
_SHAPE_OF = {VOC_CLASS_NAMES.index(n): fn for n, fn in CLASS_SHAPES.items()}


# ---------------------------------------------------------------- the style pool

@dataclass(frozen=True)
class StyleTable:
    styles: tuple[Style, ...]
    class_styles: dict[int, tuple[int, ...]]  # class id -> its styles, most frequent first


def style_table(seed: int) -> StyleTable:
    """The dataset's style pool and each class's styles (a function of the dataset seed).

    Class i's first style is style i (its signature, worn by no other object class); its other
    styles are dealt round-robin from a shuffled deck of the shared styles, so every shared style
    serves about the same number of classes and a class never gets one style twice. Backgrounds
    and clutter draw from the whole pool, signatures included.
    """
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(0x55_1B,)))
    styles = []
    for i in range(STYLE_POOL_SIZE):
        hue = (i / STYLE_POOL_SIZE + rng.uniform(-0.02, 0.02)) % 1.0
        a = tuple(float(v) for v in hsv(hue, rng.uniform(0.5, 0.95), rng.uniform(0.55, 0.95)))
        b = tuple(float(v) for v in hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.9), rng.uniform(0.15, 0.5)))
        styles.append(Style(PATTERN_KINDS[i % len(PATTERN_KINDS)], a, b, float(rng.uniform(*PATTERN_PERIOD)),
                            float(rng.uniform(0.0, np.pi))))
    shared = list(range(len(SSLBENCH_CLASSES), STYLE_POOL_SIZE))
    deck: list[int] = []
    class_styles = {}
    for signature, cls in enumerate(SSLBENCH_CLASSES):
        chosen: list[int] = [signature]
        while len(chosen) < STYLES_PER_CLASS:
            if not deck:
                deck = [shared[int(i)] for i in rng.permutation(len(shared))]
            candidate = deck.pop()
            if candidate in chosen:
                deck.insert(0, candidate)
                continue
            chosen.append(candidate)
        class_styles[cls] = tuple(chosen)
    return StyleTable(tuple(styles), class_styles)


def _pattern(style: Style, h: int, w: int, short: int, rng: Rng) -> np.ndarray:
    """An HxW field in [0, 1]: where colour_b shows through colour_a."""
    period = max(MIN_PERIOD_PX, style.period * short)
    if style.kind == "stripes":
        return (stripes(h, w, period=period, angle=style.angle, phase=float(rng.uniform(0, 2 * np.pi))) > 0) * 1.0
    if style.kind == "checker":
        a = stripes(h, w, period=period, angle=style.angle, phase=0.0)
        b = stripes(h, w, period=period, angle=style.angle + np.pi / 2, phase=0.0)
        return ((a * b) > 0) * 1.0
    if style.kind == "dots":
        a = stripes(h, w, period=period, angle=style.angle, phase=0.0)
        b = stripes(h, w, period=period, angle=style.angle + np.pi / 2, phase=0.0)
        return ((a > 0.4) & (b > 0.4)) * 1.0
    cells = max(2, round(max(h, w) / period / 2))
    return (smooth_noise(rng, h, w, cells=cells) > 0) * 1.0


_place = partial(random_placement, margin=CENTRE_MARGIN, max_angle=MAX_ANGLE)
LOOK = Look(_pattern, value_jitter=INSTANCE_VALUE_JITTER, tint_jitter=INSTANCE_TINT_JITTER,
            secondary_shade=SECONDARY_PART_SHADE)


# ---------------------------------------------------------------- one image

@dataclass(frozen=True)
class SceneObject:
    class_id: int
    style: int


def _clutter_parts(rng: Rng) -> list[Part]:
    kind = int(rng.integers(3))
    if kind == 0:
        return [Part(ellipse(0, 0, 1.0, rng.uniform(0.3, 1.0)), 0)]
    if kind == 1:
        return [Part(rect(-1.0, -rng.uniform(0.2, 1.0), 1.0, rng.uniform(0.2, 1.0)), 0)]
    return [Part(random_polygon(rng, vertices=(5, 8), radius=(0.5, 1.0)), 0)]


def render_sslbench_scene(rng: Rng, size: tuple[int, int], table: StyleTable
                          ) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    """(RGB uint8 image, uint8 class map with a 255 boundary band, the objects drawn)."""
    h, w = size
    short = min(h, w)
    n = int(rng.choice(OBJECT_COUNTS))
    objects = []
    for _ in range(n):
        cls = int(rng.choice(SSLBENCH_CLASSES))
        style = table.class_styles[cls][int(rng.choice(len(STYLE_FREQUENCIES), p=STYLE_FREQUENCIES))]
        objects.append(SceneObject(cls, style))
    # The background never wears an object's style in the same image, or that object would be
    # invisible; every other style of the pool is allowed, including other classes' styles.
    used = {o.style for o in objects}
    free = [s for s in range(STYLE_POOL_SIZE) if s not in used]
    background = table.styles[int(rng.choice(free))]
    image = LOOK.paint(background, h, w, short, rng, contrast=BACKGROUND_CONTRAST)
    scratch = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.choice(CLUTTER_COUNTS))):
        style = table.styles[int(rng.integers(STYLE_POOL_SIZE))]
        clutter = PlacedObject(0, _clutter_parts(rng), _place(rng, CLUTTER_EXTENT, h, w),
                               LOOK.painter(style, short, contrast=OBJECT_CONTRAST))
        paint_object(image, scratch, clutter, rng)
    label = np.zeros((h, w), np.uint8)
    for obj in objects:
        placed = PlacedObject(obj.class_id, _SHAPE_OF[obj.class_id](rng), _place(rng, OBJECT_EXTENT, h, w),
                              LOOK.painter(table.styles[obj.style], short, contrast=OBJECT_CONTRAST))
        paint_object(image, label, placed, rng)
    # Objects may hide each other completely: report only the ones left visible (before the void
    # band, which can still swallow a sliver of an object).
    visible = set(np.unique(label).tolist())
    objects = [o for o in objects if o.class_id in visible]
    return finish_image(rng, image), boundary_band(label, width=BAND_HALF_WIDTH_PX, ignore=IGNORE_INDEX), objects


# ---------------------------------------------------------------- labeled budgets

def balanced_order(image_classes: dict[str, list[int]], *, seed: int) -> list[str]:
    """All ids, ordered so that every prefix is as class-balanced as possible (greedy).

    At each step the image whose classes are the least represented so far wins (ties broken by a
    seeded shuffle), so any budget is a prefix: budgets are nested by construction.
    """
    ids = sorted(image_classes)
    rng = np.random.default_rng(seed)
    remaining = [ids[i] for i in rng.permutation(len(ids))]
    counts = {c: 0 for c in SSLBENCH_CLASSES}
    order = []
    while remaining:
        def deficit(image_id: str) -> float:
            classes = image_classes[image_id]
            return sum(1.0 / (1 + counts[c]) for c in classes) / max(1, len(classes))
        best = max(range(len(remaining)), key=lambda i: deficit(remaining[i]))
        chosen = remaining.pop(best)
        order.append(chosen)
        for c in image_classes[chosen]:
            counts[c] += 1
    return order


def metadata(table: StyleTable, objects: dict[str, list[SceneObject]], order: list[str]) -> dict:
    return {"format": METADATA_FORMAT, "preset": PRESET,
            "styles": [asdict(s) for s in table.styles],
            "class_styles": {str(c): list(s) for c, s in table.class_styles.items()},
            "style_frequencies": list(STYLE_FREQUENCIES),
            "images": {k: [[o.class_id, o.style] for o in v] for k, v in sorted(objects.items())},
            "balanced_order": order}


def read_metadata(root: Path) -> dict:
    path = root / METADATA_FILE
    if not path.is_file():
        raise DataprepError(f"'{path}' does not exist: '{root}' was not made by `dataprep synth --preset {PRESET}`")
    return json.loads(path.read_text())
