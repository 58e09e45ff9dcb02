"""`dataprep voc`: PASCAL VOC 2012 (classic or blender/SBD-augmented labels) to shards."""

from __future__ import annotations

from pathlib import Path

from fastforec.labels import VOC_CLASS_NAMES, VOC_FOREGROUND, VOC_NUM_CLASSES, VOC_PALETTE

from .conversion_plan import LABELED, UNLABELED, VAL, ConversionPlan, DatasetMeta, EncodeOptions, finalize_plan
from .sources import (
    DEFAULT_JPEG_QUALITY,
    identity_label_tables,
    require_dir,
    require_entries,
    samples_from_list,
    strip_image_suffix,
)
from .splitfiles import read_split_list

IMAGE_DIR = "JPEGImages"
CLASSIC_LABEL_DIR = "SegmentationClass"
BLENDER_LABEL_DIR = "SegmentationClassAug"
VAL_LIST = "ImageSets/Segmentation/val.txt"
LIST_NAMES = {LABELED: "labeled.txt", UNLABELED: "unlabeled.txt", VAL: "val.txt"}


def voc_meta(source: dict) -> DatasetMeta:
    return DatasetMeta(dataset="voc", class_names=VOC_CLASS_NAMES, palette=VOC_PALETTE,
                       foreground_classes=VOC_FOREGROUND, source=source)


def voc_encode_options() -> EncodeOptions:
    lut, valid = identity_label_tables(VOC_NUM_CLASSES)
    # VOC JPEGs go into the shards unchanged: re-encoding would lose quality and time.
    return EncodeOptions(image_policy="keep", jpeg_quality=DEFAULT_JPEG_QUALITY, label_lut=lut, label_valid=valid)


def voc_plan(*, root: Path, split_dir: Path, blender: bool, skip_bad: bool) -> ConversionPlan:
    """Labeled/unlabeled from ``split_dir`` (U2PL or UniMatch lists); labels from
    SegmentationClass (classic) or SegmentationClassAug (blender); val from ``split_dir/val.txt``
    if present, else the official ``ImageSets/Segmentation/val.txt`` with SegmentationClass labels."""
    # Absolute paths: a re-run from another working directory must recognise its own shards.
    root = require_dir(root, "--root", hint="pass the VOC2012 directory (the one holding JPEGImages/)").resolve()
    split_dir = require_dir(split_dir, "--split-dir", hint="pass a directory holding labeled.txt and "
                                                           "unlabeled.txt").resolve()
    image_dir = require_dir(root / IMAGE_DIR, "image directory")
    train_label_dir = require_dir(root / (BLENDER_LABEL_DIR if blender else CLASSIC_LABEL_DIR), "label directory",
                                  hint="SegmentationClassAug comes from the SBD-augmented set (see docs/data.md)"
                                  if blender else "")
    val_label_dir = require_dir(root / CLASSIC_LABEL_DIR, "label directory")
    val_path = split_dir / LIST_NAMES[VAL]
    if not val_path.is_file():
        val_path = root / VAL_LIST
    lists = {LABELED: require_entries(read_split_list(split_dir / LIST_NAMES[LABELED])),
             UNLABELED: read_split_list(split_dir / LIST_NAMES[UNLABELED]),
             VAL: require_entries(read_split_list(val_path))}

    def image_of(token: str) -> tuple[str, Path]:
        key = strip_image_suffix(token)
        return key, image_dir / f"{key}.jpg"

    label_dirs = {LABELED: train_label_dir, UNLABELED: None, VAL: val_label_dir}
    splits = {}
    for split, split_list in lists.items():
        label_dir = label_dirs[split]
        splits[split] = samples_from_list(
            split_list, image_of=image_of,
            label_of=(lambda key, token, d=label_dir: None if d is None else d / f"{key}.png"))
    source = {"subcommand": "voc", "root": str(root.resolve()), "split_dir": str(split_dir.resolve()),
              "labels": train_label_dir.name, "val_list": str(val_path.resolve()),
              "list_formats": {split: lst.format for split, lst in lists.items()}}
    return finalize_plan(meta=voc_meta(source), encode=voc_encode_options(), splits=splits, problems=[],
                         skip_bad=skip_bad)
