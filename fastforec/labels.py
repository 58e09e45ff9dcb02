"""Class tables: names, palettes and label-id maps of the supported datasets.

These are facts about the public datasets (VOC's 21 classes and palette; the official
Cityscapes label table from cityscapesScripts' ``labels.py``), written out as data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255

VOC_CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_NUM_CLASSES = len(VOC_CLASS_NAMES)
VOC_FOREGROUND: tuple[int, ...] = tuple(range(1, VOC_NUM_CLASSES))

# VOC's palette assigns colours by spreading the bits of the index over the three channels,
# most significant colour bit first; index 255 (the "void" boundary band) comes out as
# (224, 224, 192).
_PALETTE_BITS = 8


def bit_palette(num_entries: int = 256) -> list[tuple[int, int, int]]:
    """The VOC colour map for indices ``0 .. num_entries - 1``."""
    palette = []
    for index in range(num_entries):
        rgb = [0, 0, 0]
        value = index
        for bit in range(_PALETTE_BITS):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (_PALETTE_BITS - 1 - bit)
            value >>= 3
        palette.append((rgb[0], rgb[1], rgb[2]))
    return palette


VOC_PALETTE: tuple[tuple[int, int, int], ...] = tuple(bit_palette(VOC_NUM_CLASSES))


@dataclass(frozen=True)
class CityscapesLabel:
    name: str
    id: int
    train_id: int  # 255 = not evaluated
    category: str
    color: tuple[int, int, int]


# The official table (cityscapesScripts/helpers/labels.py); "license plate" (id -1) never
# appears in *_labelIds.png and is left out.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, "void", (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, "void", (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, "void", (0, 0, 0)),
    CityscapesLabel("static", 4, 255, "void", (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, "void", (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, "void", (81, 0, 81)),
    CityscapesLabel("road", 7, 0, "flat", (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, "flat", (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, "flat", (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, "flat", (230, 150, 140)),
    CityscapesLabel("building", 11, 2, "construction", (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, "construction", (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, "construction", (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, "construction", (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, "construction", (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, "construction", (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, "object", (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, "object", (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, "object", (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, "object", (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, "nature", (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, "nature", (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, "sky", (70, 130, 180)),
    CityscapesLabel("person", 24, 11, "human", (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, "human", (255, 0, 0)),
    CityscapesLabel("car", 26, 13, "vehicle", (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, "vehicle", (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, "vehicle", (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, "vehicle", (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, "vehicle", (0, 0, 110)),
    CityscapesLabel("train", 31, 16, "vehicle", (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, "vehicle", (119, 11, 32)),
)
CITYSCAPES_ID = {label.name: label.id for label in CITYSCAPES_LABELS}
_CITYSCAPES_TRAIN = sorted((label for label in CITYSCAPES_LABELS if label.train_id != IGNORE_INDEX),
                           key=lambda label: label.train_id)
CITYSCAPES_CLASS_NAMES: tuple[str, ...] = tuple(label.name for label in _CITYSCAPES_TRAIN)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = tuple(label.color for label in _CITYSCAPES_TRAIN)
CITYSCAPES_NUM_CLASSES = len(CITYSCAPES_CLASS_NAMES)
# FOrec's foreground on Cityscapes: the "things" a scene is about (object, human and vehicle
# categories); flat surfaces, buildings, nature and sky are background context.
CITYSCAPES_FOREGROUND_CATEGORIES = ("object", "human", "vehicle")
CITYSCAPES_FOREGROUND: tuple[int, ...] = tuple(label.train_id for label in _CITYSCAPES_TRAIN
                                               if label.category in CITYSCAPES_FOREGROUND_CATEGORIES)


def cityscapes_id_to_train_id() -> np.ndarray:
    """A 256-entry lookup table: label id -> train id. Values that are not Cityscapes label ids
    map to IGNORE_INDEX too, so the table alone cannot catch bad input: see
    ``cityscapes_valid_ids``."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        lut[label.id] = label.train_id
    return lut


def cityscapes_valid_ids() -> np.ndarray:
    """256 booleans: which uint8 values may appear in a *_gtFine_labelIds.png."""
    valid = np.zeros(256, dtype=bool)
    for label in CITYSCAPES_LABELS:
        valid[label.id] = True
    valid[IGNORE_INDEX] = True
    return valid


def identity_lut(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(lookup table, valid values) for masks that already hold train ids 0..C-1 and 255."""
    lut = np.arange(256, dtype=np.uint8)
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = True
    valid[IGNORE_INDEX] = True
    return lut, valid
