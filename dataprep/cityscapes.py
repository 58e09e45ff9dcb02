"""`dataprep cityscapes`: Cityscapes fine annotations (label ids -> 19 train ids) to shards."""

from __future__ import annotations

from pathlib import Path

from fastforec.labels import (
    CITYSCAPES_CLASS_NAMES,
    CITYSCAPES_FOREGROUND,
    CITYSCAPES_PALETTE,
    cityscapes_id_to_train_id,
    cityscapes_valid_ids,
)

from .conversion_plan import (
    LABELED,
    UNLABELED,
    VAL,
    ConversionPlan,
    DatasetMeta,
    EncodeOptions,
    SampleSource,
    finalize_plan,
)
from .errors import DataprepError, Rejection
from .sources import DEFAULT_JPEG_QUALITY, lut_bytes, require_dir, require_entries
from .splitfiles import SplitList, read_split_list

IMAGE_ROOT = "leftImg8bit"
LABEL_ROOT = "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
LIST_NAMES = {LABELED: "labeled.txt", UNLABELED: "unlabeled.txt", VAL: "val.txt"}
# Which Cityscapes subset a bare id (``aachen_000000_000019``) of each split lives in.
SUBSET_OF_SPLIT = {LABELED: "train", UNLABELED: "train", VAL: "val"}
IMAGE_FORMATS = ("png", "jpg")


def cityscapes_meta(source: dict) -> DatasetMeta:
    return DatasetMeta(dataset="cityscapes", class_names=CITYSCAPES_CLASS_NAMES, palette=CITYSCAPES_PALETTE,
                       foreground_classes=CITYSCAPES_FOREGROUND, source=source)


def cityscapes_encode_options(*, image_format: str, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> EncodeOptions:
    lut, valid = lut_bytes(cityscapes_id_to_train_id(), cityscapes_valid_ids())
    return EncodeOptions(image_policy="keep" if image_format == "png" else "jpg", jpeg_quality=jpeg_quality,
                         label_lut=lut, label_valid=valid)


def image_relpath(token: str, split: str) -> str | None:
    """The image path relative to the root for a list token, or None if the token is not a
    Cityscapes image name. Accepts ``leftImg8bit/<subset>/<city>/<id>_leftImg8bit.png`` (U2PL
    and the first UniMatch field) and a bare ``<city>_<seq>_<frame>`` id."""
    if token.endswith(IMAGE_SUFFIX):
        return token if token.startswith(f"{IMAGE_ROOT}/") else None
    if "/" in token or "." in token:
        return None
    city = token.split("_", 1)[0]
    return f"{IMAGE_ROOT}/{SUBSET_OF_SPLIT[split]}/{city}/{token}{IMAGE_SUFFIX}"


def label_relpath(image_rel: str) -> str:
    return LABEL_ROOT + image_rel[len(IMAGE_ROOT):-len(IMAGE_SUFFIX)] + LABEL_SUFFIX


def key_of(image_rel: str) -> str:
    return image_rel.rsplit("/", 1)[-1][:-len(IMAGE_SUFFIX)]


def _samples(root: Path, split: str, split_list: SplitList, problems: list[Rejection]) -> list[SampleSource]:
    samples = []
    for entry in split_list.entries:
        rel = image_relpath(entry.token, split)
        if rel is None:
            problems.append(Rejection(split, entry.token, entry.origin,
                                      f"'{entry.token}' is not a Cityscapes image path "
                                      f"({IMAGE_ROOT}/<subset>/<city>/<city>_<seq>_<frame>{IMAGE_SUFFIX})"))
            continue
        samples.append(SampleSource(key=key_of(rel), image=root / rel,
                                    label=None if split == UNLABELED else root / label_relpath(rel),
                                    origin=entry.origin))
    return samples


def _official_val(root: Path) -> list[SampleSource]:
    val_dir = require_dir(root / IMAGE_ROOT / "val", "Cityscapes val directory")
    samples = []
    for image in sorted(val_dir.glob(f"*/*{IMAGE_SUFFIX}")):
        rel = image.relative_to(root).as_posix()
        samples.append(SampleSource(key=key_of(rel), image=image, label=root / label_relpath(rel), origin=str(val_dir)))
    if not samples:
        raise DataprepError(f"no '*{IMAGE_SUFFIX}' images under '{val_dir}/<city>/'; put the val set there "
                            f"or give a val.txt in --split-dir")
    return samples


def cityscapes_plan(*, root: Path, split_dir: Path, image_format: str, skip_bad: bool,
                    jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> ConversionPlan:
    """Labeled/unlabeled from ``split_dir`` (U2PL lists of leftImg8bit paths); val from
    ``split_dir/val.txt`` if present, else every image under ``leftImg8bit/val``."""
    # Absolute paths: a re-run from another working directory must recognise its own shards.
    root = require_dir(root, "--root", hint="pass the directory holding leftImg8bit/ and gtFine/").resolve()
    split_dir = require_dir(split_dir, "--split-dir", hint="pass a directory holding labeled.txt and "
                                                           "unlabeled.txt").resolve()
    require_dir(root / IMAGE_ROOT, "image directory")
    require_dir(root / LABEL_ROOT, "label directory")
    problems: list[Rejection] = []
    lists = {LABELED: require_entries(read_split_list(split_dir / LIST_NAMES[LABELED])),
             UNLABELED: read_split_list(split_dir / LIST_NAMES[UNLABELED])}
    splits = {split: _samples(root, split, lst, problems) for split, lst in lists.items()}
    val_list = split_dir / LIST_NAMES[VAL]
    if val_list.is_file():
        lists[VAL] = require_entries(read_split_list(val_list))
        splits[VAL] = _samples(root, VAL, lists[VAL], problems)
    else:
        splits[VAL] = _official_val(root)
    source = {"subcommand": "cityscapes", "root": str(root.resolve()), "split_dir": str(split_dir.resolve()),
              "labels": f"{LABEL_ROOT}/*{LABEL_SUFFIX} -> train ids", "image_format": image_format,
              "val_list": str(val_list.resolve()) if val_list.is_file() else f"{IMAGE_ROOT}/val (all)",
              "list_formats": {split: lst.format for split, lst in lists.items()}}
    val_encode = None
    if image_format == "jpg":
        source["jpeg_quality"] = jpeg_quality
        # Only the training splits are re-encoded: mIoU stays measured on Cityscapes' own PNG
        # pixels, comparable with published numbers (and val is decoded once per evaluation).
        source["val_image_format"] = "png"
        val_encode = cityscapes_encode_options(image_format="png")
    return finalize_plan(meta=cityscapes_meta(source),
                         encode=cityscapes_encode_options(image_format=image_format, jpeg_quality=jpeg_quality),
                         splits=splits, problems=problems, skip_bad=skip_bad, val_encode=val_encode)
