"""`dataprep synth`: synthetic datasets in the official VOC / Cityscapes directory layouts, so
the real conversion path runs on them. Deterministic from the seed (each sample from its own
seed-and-id RNG), whatever the number of workers."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataprepError
from .cityscapes_tree import TRAIN_CITIES, VAL_CITIES, default_keys, write_cityscapes_tree
from .voc_tree import write_voc_tree

LAYOUTS = ("voc", "cityscapes")
DEFAULT_SIZE = {"voc": (375, 500), "cityscapes": (512, 1024)}  # VOC-like; half-resolution Cityscapes
DEFAULT_JPEG_QUALITY = 90
VOC_TRAIN_YEAR, VOC_VAL_YEAR = 2007, 2008
MIN_SIDE = 16


def default_voc_ids(num_train: int, num_val: int) -> tuple[list[str], list[str]]:
    """VOC-style ids (``2007_000000``): no dots, sorted like the real ones."""
    return ([f"{VOC_TRAIN_YEAR}_{i:06d}" for i in range(num_train)],
            [f"{VOC_VAL_YEAR}_{i:06d}" for i in range(num_val)])


def synthesize(layout: str, out: Path, *, train_ids: list[str], val_ids: list[str], size: tuple[int, int],
               seed: int, workers: int = 1, jpeg_quality: int = DEFAULT_JPEG_QUALITY, quiet: bool = True,
               classic_ids: list[str] | None = None, preset: str = "scenes") -> Path:
    """Write the samples named by ``train_ids``/``val_ids`` (VOC ids, or Cityscapes
    ``<city>_<seq>_<frame>`` keys) under ``out``; returns ``out``, the ``--root`` to convert.
    VOC: ``classic_ids`` (default every second training id) form train.txt and get
    SegmentationClass masks, like the 1464 classic ids of real VOC. ``preset`` (VOC only):
    "scenes" or "sslbench" (see dataprep/synth/sslbench.py)."""
    if layout not in LAYOUTS:
        raise DataprepError(f"--layout must be one of {LAYOUTS}, got '{layout}'")
    if min(size) < MIN_SIDE:
        raise DataprepError(f"--size {size[0]}x{size[1]} is too small (each side >= {MIN_SIDE})")
    if not train_ids or not val_ids:
        raise DataprepError("synthetic data needs at least one training and one validation image")
    if set(train_ids) & set(val_ids):
        raise DataprepError(f"ids in both train and val: {sorted(set(train_ids) & set(val_ids))[:5]}")
    if layout != "voc" and preset != "scenes":
        raise DataprepError(f"--preset {preset} exists for --layout voc only")
    out.mkdir(parents=True, exist_ok=True)
    if layout == "voc":
        return write_voc_tree(out, train_ids=train_ids, val_ids=val_ids, size=size, seed=seed,
                              jpeg_quality=jpeg_quality, workers=workers, quiet=quiet, classic_ids=classic_ids,
                              preset=preset)
    return write_cityscapes_tree(out, train_keys=train_ids, val_keys=val_ids, size=size, seed=seed,
                                 workers=workers, quiet=quiet)


def default_ids(layout: str, num_train: int, num_val: int) -> tuple[list[str], list[str]]:
    if layout == "cityscapes":
        return default_keys(TRAIN_CITIES, num_train), default_keys(VAL_CITIES, num_val)
    return default_voc_ids(num_train, num_val)


def make_synthetic(layout: str, out: Path, *, num_train: int, num_val: int, size: tuple[int, int],
                   seed: int) -> Path:
    """A synthetic raw dataset of ``num_train`` training and ``num_val`` val images of
    ``size`` (H, W) in the official ``layout`` tree under ``out``; returns ``out``."""
    train_ids, val_ids = default_ids(layout, num_train, num_val)
    return synthesize(layout, Path(out), train_ids=train_ids, val_ids=val_ids, size=size, seed=seed)
