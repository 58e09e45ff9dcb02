"""Shared pieces of the dataset-specific planners (voc, cityscapes, folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastforec.labels import identity_lut

from .conversion_plan import SampleSource
from .errors import DataprepError
from .splitfiles import SplitList

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_JPEG_QUALITY = 95  # for re-encoded images (Cityscapes --image-format jpg)


def require_dir(path: Path, what: str, *, hint: str = "") -> Path:
    if not path.is_dir():
        extra = f"; {hint}" if hint else ""
        raise DataprepError(f"{what} '{path}' does not exist or is not a directory{extra}")
    return path


def strip_image_suffix(token: str) -> str:
    """``JPEGImages/x.jpg`` -> ``x``; a bare id is returned as is (even with dots, which the
    key check then reports instead of silently truncating the id)."""
    name = token.rsplit("/", 1)[-1]
    if name.lower().endswith(IMAGE_SUFFIXES):
        name = name.rsplit(".", 1)[0]
    return name


def require_entries(split_list: SplitList) -> SplitList:
    if not split_list.entries:
        raise DataprepError(f"split list '{split_list.path}' lists no ids")
    return split_list


def lut_bytes(lut: np.ndarray, valid: np.ndarray) -> tuple[bytes, bytes]:
    return lut.astype(np.uint8).tobytes(), valid.astype(np.uint8).tobytes()


def identity_label_tables(num_classes: int) -> tuple[bytes, bytes]:
    return lut_bytes(*identity_lut(num_classes))


def samples_from_list(split_list: SplitList, *, image_of, label_of) -> list[SampleSource]:
    """One SampleSource per list entry; ``image_of(token)``/``label_of(token)`` give
    (key, path) and path (or None for unlabeled)."""
    samples = []
    for entry in split_list.entries:
        key, image = image_of(entry.token)
        samples.append(SampleSource(key=key, image=image, label=label_of(key, entry.token), origin=entry.origin))
    return samples
