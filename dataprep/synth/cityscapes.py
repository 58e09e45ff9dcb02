"""Synthetic street scenes with real Cityscapes *label ids* (road 7, sidewalk 8, building 11,
vegetation 21, sky 23, person 24, car 26, ...), including ids that the train-id map sends to
255 (unlabeled 0, ego vehicle 1, rectification border 2, static 4, dynamic 5, ground 6,
parking 9, guard rail 14, polegroup 18), so the real label mapping runs on it."""

from __future__ import annotations

from typing import Callable

import numpy as np

from fastforec.labels import CITYSCAPES_ID

from .common import PlacedObject, finish_image, paint_object
from .shapes import Part, Placement, chamfered_rect, ellipse, poly, rect
from .textures import Rng, hsv, shade, smooth_noise, stripes, vertical_ramp
from .voc import person_parts

ID = CITYSCAPES_ID
Texture = Callable[[Rng, int, int], np.ndarray]  # (rng, h, w) -> RGB in [0, 1]

EGO_VEHICLE_PROB = 0.7
BORDER_PROB = 0.3
PARKING_PROB = 0.4
GUARD_RAIL_PROB = 0.3
MAX_VEHICLES = 5
MAX_PEOPLE = 4
MAX_POLES = 4
MAX_CLUTTER = 3


def _noise_texture(colour: tuple[float, float, float], strength: float, cells: int, grain: float = 0.0) -> Texture:
    def texture(rng: Rng, h: int, w: int) -> np.ndarray:
        base = hsv(*colour) * np.float32(rng.uniform(0.85, 1.15))
        field = smooth_noise(rng, h, w, cells=cells)
        if grain:
            field = field + grain * rng.standard_normal(size=(h, w), dtype=np.float32)
        return shade(np.clip(base, 0, 1), field, strength)
    return texture


def _grid_texture(colour: tuple[float, float, float], period_frac: float, strength: float) -> Texture:
    def texture(rng: Rng, h: int, w: int) -> np.ndarray:
        period = max(3.0, period_frac * w)
        grid = np.maximum(stripes(h, w, period=period, angle=0.0, phase=0.0),
                          stripes(h, w, period=period / 2, angle=np.pi / 2, phase=0.0)) > 0.8
        return shade(hsv(*colour), grid * np.float32(-1.0) + 0.2 * smooth_noise(rng, h, w, cells=8), strength)
    return texture


def _sky(rng: Rng, h: int, w: int) -> np.ndarray:
    base = hsv(rng.uniform(0.55, 0.6), rng.uniform(0.15, 0.45), rng.uniform(0.8, 0.95))
    return shade(base, -0.3 * vertical_ramp(h, w) + 0.1 * smooth_noise(rng, h, w, cells=4), 0.5)


def _facade(rng: Rng, h: int, w: int) -> np.ndarray:
    colour = (rng.uniform(0.0, 0.12), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.75))
    return _grid_texture(colour, rng.uniform(0.02, 0.05), 0.45)(rng, h, w)


STUFF: dict[int, Texture] = {
    ID["road"]: _noise_texture((0.75, 0.1, 0.35), 0.12, 16, grain=0.15),
    ID["sidewalk"]: _grid_texture((0.9, 0.12, 0.6), 0.03, 0.15),
    ID["building"]: _facade,
    ID["wall"]: _noise_texture((0.1, 0.05, 0.6), 0.1, 6),
    ID["fence"]: lambda rng, h, w: shade(hsv(0.08, 0.3, 0.55), stripes(h, w, period=max(3.0, w / 40), angle=0.0,
                                                                          phase=0.0), 0.4),
    ID["vegetation"]: _noise_texture((0.25, 0.6, 0.4), 0.5, 24, grain=0.2),
    ID["terrain"]: _noise_texture((0.17, 0.45, 0.55), 0.3, 12, grain=0.1),
    ID["sky"]: _sky,
    ID["parking"]: _grid_texture((0.0, 0.15, 0.5), 0.08, 0.3),
    ID["ground"]: _noise_texture((0.08, 0.25, 0.45), 0.2, 8),
    ID["guard rail"]: lambda rng, h, w: shade(hsv(0.0, 0.0, 0.7), stripes(h, w, period=max(3.0, h / 3),
                                                                          angle=np.pi / 2, phase=0.0), 0.3),
    ID["ego vehicle"]: _noise_texture((0.6, 0.3, 0.12), 0.3, 3),
    ID["rectification border"]: lambda rng, h, w: np.zeros((h, w, 3), np.float32),
    ID["unlabeled"]: _noise_texture((0.0, 0.0, 0.2), 0.2, 4),
    ID["static"]: _noise_texture((0.1, 0.3, 0.35), 0.3, 4),
    ID["dynamic"]: _noise_texture((0.05, 0.6, 0.4), 0.3, 4),
}


def _paint_region(image: np.ndarray, label: np.ndarray, mask: np.ndarray, label_id: int, rng: Rng) -> None:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    sel = mask[y0:y1, x0:x1]
    image[y0:y1, x0:x1][sel] = STUFF[label_id](rng, y1 - y0, x1 - x0)[sel]
    label[y0:y1, x0:x1][sel] = label_id


def _solid(colour: np.ndarray, strength: float = 0.1) -> Callable[[Rng, np.ndarray], np.ndarray]:
    def painter(rng: Rng, partmap: np.ndarray) -> np.ndarray:
        return shade(colour, smooth_noise(rng, *partmap.shape, cells=3), strength)
    return painter


def _parts_painter(colours: dict[int, np.ndarray]) -> Callable[[Rng, np.ndarray], np.ndarray]:
    def painter(rng: Rng, partmap: np.ndarray) -> np.ndarray:
        out = np.zeros(partmap.shape + (3,), np.float32)
        noise = smooth_noise(rng, *partmap.shape, cells=4)
        for part, colour in colours.items():
            sel = partmap == 1 + part
            out[sel] = shade(colour, noise, 0.12)[sel]
        return out
    return painter


def _vehicle_parts(kind: str) -> list[Part]:
    """Rear views: body, rear window, tail lights, wheels. Local box [-1, 1], bottom at y=1."""
    top = {"car": -0.2, "truck": -1.0, "bus": -1.0}[kind]
    parts = [Part(ellipse(-0.7, 0.85, 0.18, 0.15), 2), Part(ellipse(0.7, 0.85, 0.18, 0.15), 2),
             Part(chamfered_rect(-1.0, top, 1.0, 0.85, cut=0.1), 0)]
    window_top = top + (0.08 if kind == "car" else 0.15)
    window_bottom = top + (0.45 if kind == "car" else 0.6)
    parts += [Part(rect(-0.8, window_top, 0.8, window_bottom), 1),
              Part(rect(-0.95, 0.4, -0.7, 0.55), 3), Part(rect(0.7, 0.4, 0.95, 0.55), 3)]
    if kind == "car":
        parts.insert(2, Part(poly((-0.75, top), (-0.55, -0.75), (0.55, -0.75), (0.75, top)), 0))
        parts.append(Part(poly((-0.5, top), (-0.45, -0.68), (0.45, -0.68), (0.5, top)), 1))
    return parts


def _vehicle(rng: Rng, kind: str) -> tuple[list[Part], Callable[[Rng, np.ndarray], np.ndarray]]:
    body = hsv(rng.uniform(), rng.uniform(0.0, 0.8), rng.uniform(0.15, 0.9))
    colours = {0: body, 1: hsv(0.6, 0.2, 0.2), 2: np.full(3, 0.05, np.float32), 3: hsv(0.0, 0.9, 0.8)}
    return _vehicle_parts(kind), _parts_painter(colours)


def _person(rng: Rng) -> tuple[list[Part], Callable[[Rng, np.ndarray], np.ndarray]]:
    colours = {0: hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)),
               1: hsv(0.07, 0.4, rng.uniform(0.4, 0.9)), 2: hsv(0.6, 0.3, rng.uniform(0.1, 0.4)),
               3: np.full(3, 0.1, np.float32)}
    return person_parts(rng), _parts_painter(colours)


def _bicycle_parts() -> list[Part]:
    return [Part(ellipse(-0.55, 0.65, 0.35, 0.35), 0), Part(ellipse(0.55, 0.65, 0.35, 0.35), 0),
            Part(poly((-0.55, 0.6), (0.0, 0.1), (0.55, 0.6), (0.45, 0.65), (0.0, 0.25), (-0.45, 0.65)), 0)]


class _Scene:
    """Geometry of one street: horizon, vanishing point, road and sidewalk widths."""

    def __init__(self, rng: Rng, h: int, w: int):
        self.h, self.w = h, w
        self.hy = int(rng.uniform(0.38, 0.5) * h)
        self.vx = rng.uniform(0.4, 0.6) * w
        self.road_half = rng.uniform(0.45, 0.8) * w
        self.side = rng.uniform(0.15, 0.35) * w
        yy = np.arange(h, dtype=np.float32)[:, None]
        xx = np.arange(w, dtype=np.float32)[None, :]
        self.t = np.clip((yy - self.hy) / max(1, h - self.hy), 0.0, 1.0)  # 0 at the horizon
        self.d = np.abs(xx - self.vx)
        self.below = np.broadcast_to(yy >= self.hy, (h, w))

    def depth_at(self, y: float) -> float:
        return float(np.clip((y - self.hy) / max(1, self.h - self.hy), 0.0, 1.0))

    def road_x(self, rng: Rng, t: float, *, lane: float) -> float:
        return self.vx + lane * t * self.road_half

    def sidewalk_x(self, rng: Rng, t: float) -> float:
        sign = 1 if rng.uniform() < 0.5 else -1
        return self.vx + sign * t * (self.road_half + rng.uniform(0.2, 0.8) * self.side)


def _paint_background(rng: Rng, s: _Scene, image: np.ndarray, label: np.ndarray) -> None:
    h, w = s.h, s.w
    _paint_region(image, label, ~s.below, ID["sky"], rng)
    x = 0
    while x < w:  # skyline of building blocks, some walls or fences in front
        bw = int(rng.uniform(0.08, 0.25) * w) + 1
        top = int(rng.uniform(0.05, 0.9) * s.hy)
        block = np.zeros((h, w), bool)
        block[top:s.hy + 1, x:x + bw] = True
        _paint_region(image, label, block, ID["building"], rng)
        x += bw
    for _ in range(int(rng.integers(1, 4))):  # tree crowns over the skyline
        cx, cy = rng.uniform(0, w), s.hy - rng.uniform(0.05, 0.25) * h
        r = rng.uniform(0.05, 0.15) * h
        yy, xx = np.ogrid[:h, :w]
        crown = ((xx - cx) / (1.3 * r)) ** 2 + ((yy - cy) / r) ** 2 < 1.0
        _paint_region(image, label, crown, ID["vegetation"], rng)
    road = s.below & (s.d < s.t * s.road_half)
    sidewalk = s.below & ~road & (s.d < s.t * (s.road_half + s.side))
    beyond = s.below & ~road & ~sidewalk
    beyond_id = [ID["building"], ID["vegetation"], ID["terrain"], ID["wall"], ID["fence"]][int(rng.integers(5))]
    _paint_region(image, label, beyond, beyond_id, rng)
    _paint_region(image, label, sidewalk, ID["sidewalk"], rng)
    _paint_region(image, label, road, ID["road"], rng)
    lane = road & (np.abs(s.d - s.t * s.road_half * 0.5) < 1.0 + 0.01 * w * s.t) \
        & ((np.arange(h)[:, None] // max(2, h // 20)) % 2 == 0)
    image[lane] = 0.85  # lane markings are painted road: still label "road"
    if rng.uniform() < PARKING_PROB:
        patch = sidewalk & (np.arange(h)[:, None] > s.hy + rng.uniform(0.2, 0.6) * (h - s.hy))
        patch &= np.arange(w)[None, :] < rng.uniform(0.2, 0.5) * w
        _paint_region(image, label, patch, ID["parking"], rng)
    if rng.uniform() < GUARD_RAIL_PROB:
        rail = s.below & (np.abs(s.d - s.t * s.road_half) < 0.02 * w * s.t + 1) & (s.t > 0.1)
        _paint_region(image, label, rail, ID["guard rail"], rng)


Depth = tuple[float, PlacedObject]  # (ground line y, object): a larger y is nearer the camera
RIDER_PROB = 0.3
BICYCLE_PROB = 0.7  # of riders; the others ride motorcycles
POLEGROUP_PROB = 0.1
SIGN_PROB = 0.5  # of poles; the others carry a traffic light
STATIC_PROB = 0.6  # of clutter; the rest is "dynamic"


def _ground_y(s: _Scene, t: float) -> float:
    return s.hy + t * (s.h - s.hy)


def _vehicles(rng: Rng, s: _Scene) -> list[Depth]:
    out = []
    for _ in range(int(rng.integers(1, MAX_VEHICLES + 1))):
        kind = str(rng.choice(["car", "car", "car", "truck", "bus"]))
        t = rng.uniform(0.1, 1.0)
        scale = (0.03 + 0.22 * t) * min(s.h, s.w) * (1.3 if kind != "car" else 1.0)
        y = _ground_y(s, t)
        parts, painter = _vehicle(rng, kind)
        x = s.road_x(rng, t, lane=rng.uniform(-0.9, 0.9))
        out.append((y, PlacedObject(ID[kind], parts, Placement(x, y - scale, scale, 0.0, False), painter)))
    return out


def _people(rng: Rng, s: _Scene) -> list[Depth]:
    out: list[Depth] = []
    for _ in range(int(rng.integers(0, MAX_PEOPLE + 1))):
        t = rng.uniform(0.1, 1.0)
        scale = (0.04 + 0.35 * t) * min(s.h, s.w)
        y = _ground_y(s, t)
        parts, painter = _person(rng)
        if rng.uniform() < RIDER_PROB:  # on a bicycle or motorcycle, at the road edge
            x = s.road_x(rng, t, lane=float(rng.choice([-0.85, 0.85])))
            bike = "bicycle" if rng.uniform() < BICYCLE_PROB else "motorcycle"
            out.append((y, PlacedObject(ID["rider"], parts, Placement(x, y - 1.6 * scale, scale, 0.0, False),
                                        painter)))
            out.append((y + 0.5, PlacedObject(ID[bike], _bicycle_parts(), Placement(x, y - scale, scale, 0.0, False),
                                              _solid(hsv(rng.uniform(), 0.6, 0.3)))))
        else:
            placement = Placement(s.sidewalk_x(rng, t), y - scale, scale, 0.0, bool(rng.integers(2)))
            out.append((y, PlacedObject(ID["person"], parts, placement, painter)))
    return out


def _poles(rng: Rng, s: _Scene) -> list[Depth]:
    """Poles on the sidewalk, each topped by a traffic sign or a traffic light."""
    out: list[Depth] = []
    for _ in range(int(rng.integers(0, MAX_POLES + 1))):
        t = rng.uniform(0.15, 1.0)
        y, x = _ground_y(s, t), s.sidewalk_x(rng, t)
        height = (0.15 + 0.6 * t) * s.h
        width = max(1.0, 0.008 * s.w * (0.3 + t))
        pole_id = ID["polegroup"] if rng.uniform() < POLEGROUP_PROB else ID["pole"]
        out.append((y, PlacedObject(pole_id, [Part(rect(-width, -height, width, 0.0), 0)],
                                    Placement(x, y, 1.0, 0.0, False), _solid(hsv(0.0, 0.0, 0.55)))))
        head = max(2.0, 0.05 * height)
        top = Placement(x, y - height, 1.0, 0.0, False)
        if rng.uniform() < SIGN_PROB:
            sign = ellipse(0, 0, head, head) if rng.uniform() < 0.5 else rect(-head, -head, head, head)
            out.append((y, PlacedObject(ID["traffic sign"], [Part(sign, 0)], top,
                                        _solid(hsv(float(rng.choice([0.0, 0.6, 0.15])), 0.8, 0.85)))))
        else:
            box = rect(-0.5 * head, -1.5 * head, 0.5 * head, 1.5 * head)
            out.append((y, PlacedObject(ID["traffic light"], [Part(box, 0)], top, _solid(hsv(0.1, 0.3, 0.15)))))
    return out


def _clutter(rng: Rng, s: _Scene) -> list[Depth]:
    """Bins and boxes on the sidewalk: void classes (static, dynamic) that map to 255."""
    out = []
    for _ in range(int(rng.integers(0, MAX_CLUTTER + 1))):
        t = rng.uniform(0.2, 1.0)
        y = _ground_y(s, t)
        size = (0.01 + 0.06 * t) * min(s.h, s.w)
        clutter_id = ID["static"] if rng.uniform() < STATIC_PROB else ID["dynamic"]
        out.append((y, PlacedObject(clutter_id, [Part(rect(-1, -2, 1, 0), 0)],
                                    Placement(s.sidewalk_x(rng, t), y, size, 0.0, False),
                                    _solid(hsv(rng.uniform(), 0.4, 0.4), 0.3))))
    return out


def _objects(rng: Rng, s: _Scene) -> list[PlacedObject]:
    """Things on the street, nearest last (painted over the farther ones)."""
    placed = _vehicles(rng, s) + _people(rng, s) + _poles(rng, s) + _clutter(rng, s)
    # stable sort on the ground line only: equal depths keep their (seeded) creation order
    return [obj for _, obj in sorted(placed, key=lambda pair: pair[0])]


def _paint_frame(rng: Rng, s: _Scene, image: np.ndarray, label: np.ndarray) -> None:
    """What the camera sees of its own car, and the rectification border."""
    h, w = s.h, s.w
    yy, xx = np.ogrid[:h, :w]
    if rng.uniform() < EGO_VEHICLE_PROB:
        hood = rng.uniform(0.06, 0.12) * h
        bump = hood * (1.0 - ((xx - w / 2) / (0.7 * w)) ** 2)
        _paint_region(image, label, np.broadcast_to(yy > h - bump, (h, w)), ID["ego vehicle"], rng)
    if rng.uniform() < BORDER_PROB:
        band = max(1, int(0.01 * w))
        border = np.zeros((h, w), bool)
        border[:, :band] = border[:, -band:] = True
        _paint_region(image, label, border, ID["rectification border"], rng)


def render_cityscapes_scene(rng: Rng, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, uint8 map of Cityscapes label ids) for one synthetic frame."""
    h, w = size
    image = np.zeros((h, w, 3), np.float32)
    label = np.full((h, w), ID["unlabeled"], np.uint8)
    scene = _Scene(rng, h, w)
    _paint_background(rng, scene, image, label)
    for obj in _objects(rng, scene):
        paint_object(image, label, obj, rng)
    _paint_frame(rng, scene, image, label)
    return finish_image(rng, image), label
