"""`dataprep folder`: a custom dataset, a directory of images plus a directory of masks
(``<stem>.png`` holding class ids 0..C-1 and 255), optionally a directory of unlabeled images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastforec.labels import IGNORE_INDEX, bit_palette

from .conversion_plan import (
    LABELED,
    UNLABELED,
    VAL,
    ConversionPlan,
    DatasetMeta,
    EncodeOptions,
    SampleSource,
    finalize_plan,
    sanitize_key,
)
from .errors import DataprepError, Rejection
from .sources import DEFAULT_JPEG_QUALITY, identity_label_tables, require_dir, require_entries, strip_image_suffix
from .splitfiles import SplitList, read_split_list

FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIX = ".png"
DEFAULT_VAL_FRACTION = 0.1  # of the masked images, when --num-val is not given
LIST_NAMES = {LABELED: "labeled.txt", UNLABELED: "unlabeled.txt", VAL: "val.txt"}
INDEX_SPLIT = "index"  # Rejection.split for problems found while listing a directory


@dataclass(frozen=True)
class FolderClasses:
    num_classes: int
    class_names: tuple[str, ...] | None = None
    foreground: tuple[int, ...] | None = None  # default: every class but 0 (background)


@dataclass(frozen=True)
class FolderSplit:
    """Either ``split_dir`` (labeled.txt, optional unlabeled.txt and val.txt, ids = file stems)
    or a seeded random partition of the masked images into ``num_val`` val, ``labeled`` labeled
    and the rest unlabeled."""

    split_dir: Path | None = None
    labeled: int | None = None
    num_val: int | None = None
    seed: int = 0


def _index(directory: Path, suffixes: tuple[str, ...], problems: list[Rejection]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        key = sanitize_key(path.stem)
        if key in found:
            problems.append(Rejection(INDEX_SPLIT, key, str(path),
                                      f"duplicate id '{key}': '{found[key].name}' has the same id"))
            continue
        found[key] = path
    return found


def folder_meta(classes: FolderClasses, name: str, source: dict) -> DatasetMeta:
    c = classes.num_classes
    if not 1 <= c < IGNORE_INDEX:
        raise DataprepError(f"--num-classes must be in 1..{IGNORE_INDEX - 1}, got {c}")
    names = classes.class_names or tuple(f"class_{i}" for i in range(c))
    if len(names) != c:
        raise DataprepError(f"--class-names gives {len(names)} names for --num-classes {c}")
    fg = classes.foreground if classes.foreground is not None else tuple(range(1, c))
    if any(not 0 <= k < c for k in fg):
        raise DataprepError(f"--foreground classes {list(fg)} must be in 0..{c - 1}")
    return DatasetMeta(dataset=name, class_names=tuple(names), palette=tuple(bit_palette(c)),
                       foreground_classes=tuple(fg), source=source)


def folder_encode_options(num_classes: int) -> EncodeOptions:
    lut, valid = identity_label_tables(num_classes)
    return EncodeOptions(image_policy="keep_or_png", jpeg_quality=DEFAULT_JPEG_QUALITY, label_lut=lut,
                         label_valid=valid)


def _from_list(split: str, split_list: SplitList, *, images: dict[str, Path], masks: dict[str, Path] | None,
               problems: list[Rejection]) -> list[SampleSource]:
    samples = []
    for entry in split_list.entries:
        key = sanitize_key(strip_image_suffix(entry.token))
        if key not in images:
            problems.append(Rejection(split, key, entry.origin, f"id '{key}' has no image file"))
            continue
        label = None
        if masks is not None:
            if key not in masks:
                problems.append(Rejection(split, key, entry.origin, f"id '{key}' has no mask '{key}{MASK_SUFFIX}'"))
                continue
            label = masks[key]
        samples.append(SampleSource(key=key, image=images[key], label=label, origin=entry.origin))
    return samples


def _random_partition(split: FolderSplit, *, images: dict[str, Path], masks: dict[str, Path],
                      extra_unlabeled: dict[str, Path]) -> dict[str, list[SampleSource]]:
    masked = sorted(k for k in images if k in masks)
    num_val = split.num_val if split.num_val is not None else max(1, round(DEFAULT_VAL_FRACTION * len(masked)))
    assert split.labeled is not None
    if split.labeled < 1 or num_val < 0 or split.labeled + num_val > len(masked):
        raise DataprepError(f"cannot take --labeled {split.labeled} and --num-val {num_val} from "
                            f"{len(masked)} images that have masks")
    order = [masked[i] for i in np.random.default_rng(split.seed).permutation(len(masked))]
    val, labeled = order[:num_val], order[num_val:num_val + split.labeled]
    origin = "random partition"
    out = {VAL: [SampleSource(k, images[k], masks[k], origin) for k in val],
           LABELED: [SampleSource(k, images[k], masks[k], origin) for k in labeled],
           UNLABELED: [SampleSource(k, images[k], None, origin) for k in order[num_val + split.labeled:]]}
    out[UNLABELED] += [SampleSource(k, p, None, origin) for k, p in images.items() if k not in masks]
    out[UNLABELED] += [SampleSource(k, p, None, origin) for k, p in extra_unlabeled.items()]
    return out


def folder_plan(*, images_dir: Path, masks_dir: Path, unlabeled_dir: Path | None, classes: FolderClasses,
                split: FolderSplit, name: str, skip_bad: bool) -> ConversionPlan:
    # Absolute paths: a re-run from another working directory must recognise its own shards.
    images_dir = require_dir(images_dir, "--images").resolve()
    masks_dir = require_dir(masks_dir, "--masks").resolve()
    problems: list[Rejection] = []
    images = _index(images_dir, FOLDER_IMAGE_SUFFIXES, problems)
    masks = _index(masks_dir, (MASK_SUFFIX,), problems)
    if unlabeled_dir is not None:
        unlabeled_dir = require_dir(unlabeled_dir, "--unlabeled").resolve()
    extra = _index(unlabeled_dir, FOLDER_IMAGE_SUFFIXES, problems) if unlabeled_dir is not None else {}
    source: dict = {"subcommand": "folder", "images": str(images_dir.resolve()), "masks": str(masks_dir.resolve()),
                    "unlabeled": str(unlabeled_dir.resolve()) if unlabeled_dir else None}
    if split.split_dir is not None:
        require_dir(split.split_dir, "--split-dir")
        labeled = require_entries(read_split_list(split.split_dir / LIST_NAMES[LABELED]))
        splits = {LABELED: _from_list(LABELED, labeled, images=images, masks=masks, problems=problems)}
        for name_, with_masks in ((UNLABELED, False), (VAL, True)):
            path = split.split_dir / LIST_NAMES[name_]
            if path.is_file():
                lookup = {**images, **extra} if name_ == UNLABELED else images
                splits[name_] = _from_list(name_, read_split_list(path), images=lookup,
                                           masks=masks if with_masks else None, problems=problems)
        source["split_dir"] = str(split.split_dir.resolve())
    else:
        if split.labeled is None:
            raise DataprepError("give either --split-dir or --labeled N (with --seed)")
        splits = _random_partition(split, images=images, masks=masks, extra_unlabeled=extra)
        source.update(labeled=split.labeled, seed=split.seed, num_val=len(splits[VAL]))
    return finalize_plan(meta=folder_meta(classes, name, source), encode=folder_encode_options(classes.num_classes),
                         splits=splits, problems=problems, skip_bad=skip_bad)
