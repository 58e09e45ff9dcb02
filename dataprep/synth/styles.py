"""Patterned materials of the object-centred presets (sslbench, pretrain): a style is a pattern
kind, two colours, a period and an angle; a preset's look says how its pattern kinds are drawn
and how much instances of one style vary. The presets keep their own kinds and constants, so
that the pretraining source shares no texture with the benchmark it pretrains for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .common import Painter
from .textures import Rng


@dataclass(frozen=True)
class Style:
    kind: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    period: float  # fraction of the image's short side
    angle: float


# (style, h, w, image short side, rng) -> an HxW field in [0, 1]: where colour_b shows through colour_a
Pattern = Callable[[Style, int, int, int, Rng], np.ndarray]


@dataclass(frozen=True)
class Look:
    pattern: Pattern
    value_jitter: float  # instances of a style vary a little, like real materials
    tint_jitter: float
    secondary_shade: tuple[float, ...]  # parts 1, 2, ... of an object: the style's second colour, darker

    def paint(self, style: Style, h: int, w: int, short: int, rng: Rng, *, contrast: float) -> np.ndarray:
        """An HxWx3 float image in [0, 1]; ``contrast`` < 1 pulls the two colours towards their mean."""
        a, b = np.array(style.colour_a, np.float32), np.array(style.colour_b, np.float32)
        # drawn before the pattern: the datasets' bytes depend on the order of the draws
        shift = np.float32(rng.uniform(-self.value_jitter, self.value_jitter))
        tint = rng.uniform(-self.tint_jitter, self.tint_jitter, 3).astype(np.float32)
        a, b = np.clip(a * (1 + tint) + shift, 0, 1), np.clip(b + shift, 0, 1)
        field = self.pattern(style, h, w, short, rng).astype(np.float32)[..., None]
        field = (1 - contrast) / 2 + contrast * field
        return (a * (1 - field) + b * field).astype(np.float32)

    def painter(self, style: Style, short: int, *, contrast: float) -> Painter:
        """An object's painter: part 0 wears the style, the other parts its second colour, shaded."""
        def paint(rng: Rng, partmap: np.ndarray) -> np.ndarray:
            h, w = partmap.shape
            out = self.paint(style, h, w, short, rng, contrast=contrast)
            second = np.array(style.colour_b, np.float32)
            for part, factor in enumerate(self.secondary_shade, start=1):
                out[partmap == 1 + part] = second * np.float32(factor)
            return out
        return paint
