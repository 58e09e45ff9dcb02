"""Polygon shapes in object-local coordinates ([-1, 1] box, y down), placed with a similarity
transform and rasterised with PIL (one label value per part)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

ELLIPSE_VERTICES = 28


@dataclass(frozen=True)
class Part:
    polygon: np.ndarray  # (n, 2) local x, y
    part: int  # which colour/texture of the object paints it (0 = main)


def ellipse(cx: float, cy: float, rx: float, ry: float, *, angle: float = 0.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    pts = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    return rotate(pts, angle) + np.array([cx, cy])


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def chamfered_rect(x0: float, y0: float, x1: float, y1: float, *, cut: float) -> np.ndarray:
    return np.array([[x0 + cut, y0], [x1 - cut, y0], [x1, y0 + cut], [x1, y1 - cut], [x1 - cut, y1],
                     [x0 + cut, y1], [x0, y1 - cut], [x0, y0 + cut]], dtype=np.float64)


def poly(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=np.float64)


def random_polygon(rng: np.random.Generator, *, vertices: tuple[int, int], radius: tuple[float, float]) -> np.ndarray:
    """An irregular polygon around the origin: ``vertices`` [low, high) corners at sorted random
    angles, each at a random distance in ``radius``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(*vertices))))
    radii = rng.uniform(*radius, size=angles.size)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


@dataclass(frozen=True)
class Placement:
    cx: float
    cy: float
    scale: float  # pixels per local unit
    angle: float  # radians
    flip: bool  # mirror left-right (objects face either way)

    def apply(self, points: np.ndarray) -> np.ndarray:
        pts = points * np.array([-1.0 if self.flip else 1.0, 1.0])
        return rotate(pts, self.angle) * self.scale + np.array([self.cx, self.cy])


def random_placement(rng: np.random.Generator, extent: tuple[float, float], h: int, w: int, *, margin: float,
                     max_angle: float) -> Placement:
    """A placement anywhere at least ``margin`` (a fraction of a side) from the border, the object's
    2-unit box spanning a fraction ``extent`` of the short side, tilted up to ``max_angle``, either way."""
    short = min(h, w)
    return Placement(cx=rng.uniform(margin, 1 - margin) * w, cy=rng.uniform(margin, 1 - margin) * h,
                     scale=rng.uniform(*extent) * short / 2.0, angle=rng.uniform(-max_angle, max_angle),
                     flip=bool(rng.integers(2)))


def rasterize(parts: list[Part], placement: Placement, size: tuple[int, int]) -> np.ndarray:
    """An HxW uint8 map: 0 outside the object, 1 + part index inside (later parts on top)."""
    h, w = size
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for p in parts:
        xy = [tuple(v) for v in placement.apply(p.polygon)]
        draw.polygon(xy, fill=1 + p.part)
    return np.asarray(canvas)
