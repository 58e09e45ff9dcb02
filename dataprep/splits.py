"""`dataprep splits`: seeded random partitions of a raw tree, written as U2PL lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cityscapes, voc
from .errors import DataprepError
from .sources import require_dir
from .splitfiles import read_split_list, write_split_list
from .synth.sslbench import read_metadata

VOC_SETS_DIR = "ImageSets/Segmentation"
VOC_CLASSIC_POOL = "train.txt"  # images with SegmentationClass masks (1464 on real VOC)
VOC_AUG_POOL = "trainaug.txt"  # with SegmentationClassAug masks (10582 on real VOC)
LAYOUTS = ("voc", "cityscapes")


@dataclass(frozen=True)
class Partition:
    labeled: list[str]
    unlabeled: list[str]


def _voc_pools(root: Path, *, blender: bool) -> tuple[list[str], list[str]]:
    """(ids that may be labeled, all training ids)."""
    sets = require_dir(root / VOC_SETS_DIR, "VOC split directory")
    aug = sets / VOC_AUG_POOL
    if blender and not aug.is_file():
        raise DataprepError(f"'{aug}' does not exist: the blender partition draws labeled ids from the 10582 "
                            f"SBD-augmented training ids (see docs/data.md)")
    classic = [e.token for e in read_split_list(sets / VOC_CLASSIC_POOL).entries]
    everything = [e.token for e in read_split_list(aug).entries] if aug.is_file() else classic
    return (everything if blender else classic), everything


def _cityscapes_pool(root: Path) -> list[str]:
    train = require_dir(root / cityscapes.IMAGE_ROOT / "train", "Cityscapes train directory")
    pool = [p.relative_to(root).as_posix() for p in sorted(train.glob(f"*/*{cityscapes.IMAGE_SUFFIX}"))]
    if not pool:
        raise DataprepError(f"no '*{cityscapes.IMAGE_SUFFIX}' images under '{train}/<city>/'")
    return pool


def random_partition(*, root: Path, layout: str, labeled: int, seed: int, blender: bool = False) -> Partition:
    """``labeled`` ids drawn without replacement (numpy PCG64 seeded with ``seed``) from the
    labelable pool; every other training id is unlabeled. Both lists sorted."""
    require_dir(root, "--root")
    if layout == "voc":
        pool, everything = _voc_pools(root, blender=blender)
    elif layout == "cityscapes":
        pool = everything = _cityscapes_pool(root)
    else:
        raise DataprepError(f"--layout must be one of {LAYOUTS}, got '{layout}'")
    pool = sorted(set(pool))
    if not 1 <= labeled <= len(pool):
        raise DataprepError(f"--labeled {labeled} is not in 1..{len(pool)} (the number of labelable images "
                            f"under '{root}')")
    chosen = {pool[i] for i in np.random.default_rng(seed).choice(len(pool), size=labeled, replace=False)}
    return Partition(labeled=sorted(chosen), unlabeled=sorted(set(everything) - chosen))


def balanced_partition(*, root: Path, labeled: int) -> Partition:
    """The first ``labeled`` ids of an sslbench tree's class-balanced order (so budgets are nested);
    every other training id is unlabeled. Both lists sorted."""
    order = read_metadata(require_dir(root, "--root"))["balanced_order"]
    if not 1 <= labeled <= len(order):
        raise DataprepError(f"--labeled {labeled} is not in 1..{len(order)} (the training images of '{root}')")
    return Partition(labeled=sorted(order[:labeled]), unlabeled=sorted(order[labeled:]))


def write_partition(partition: Partition, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_split_list(out / voc.LIST_NAMES["labeled"], partition.labeled)
    write_split_list(out / voc.LIST_NAMES["unlabeled"], partition.unlabeled)
    return out
