"""What a conversion will do: the dataset's class table, how samples are encoded, and the
ordered sample list of each split, after the cheap checks (ids, duplicates, overlaps, files
present) that run before any image is decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastforec.data.manifest import SPLITS

from .errors import Rejection, problems_error

LABELED, UNLABELED, VAL = SPLITS
SPLITS_WITH_LABELS = (LABELED, VAL)

# How images reach the shard: "keep" = original bytes (must be JPEG or PNG, RGB or grayscale),
# "keep_or_png" = original bytes when possible else re-encoded as PNG, "jpg" = re-encoded JPEG.
ImagePolicy = Literal["keep", "keep_or_png", "jpg"]

# WebDataset splits a member name at the first dot into key and extension, and DALI's index
# is space-separated: keys are restricted to characters that survive both.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
_KEY_BAD_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a WebDataset sample key, or None if it can."""
    if _KEY_PATTERN.match(key):
        return None
    return (f"id '{key}' is not a valid sample key: use only letters, digits, '_' and '-' "
            f"(a '.' would split the WebDataset key, a space would break the DALI index)")


def sanitize_key(name: str) -> str:
    """Map a file stem to a valid key (for custom folders; collisions surface as duplicates)."""
    return _KEY_BAD_CHARS.sub("_", name)


@dataclass(frozen=True)
class SampleSource:
    key: str
    image: Path
    label: Path | None  # None: an unlabeled sample
    origin: str  # where the id was listed ("labeled.txt:12" or a directory), for messages

    def stat_signature(self) -> list[Any]:
        """Path, size and mtime of the inputs: a re-run redoes a shard when any of them changed."""
        sig: list[Any] = [self.key]
        for path in (self.image, self.label):
            if path is not None:
                st = os.stat(path)
                sig += [str(path), st.st_size, st.st_mtime_ns]
        return sig


@dataclass(frozen=True)
class DatasetMeta:
    dataset: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    foreground_classes: tuple[int, ...]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class EncodeOptions:
    """Everything the per-sample worker needs; small and picklable (sent with every task)."""

    image_policy: ImagePolicy
    jpeg_quality: int
    label_lut: bytes  # 256 entries: source label value -> train id
    label_valid: bytes  # 256 entries of 0/1: which source values are allowed

    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.image_policy, self.jpeg_quality, self.label_lut.hex(),
                                          self.label_valid.hex()]).encode()).hexdigest()


@dataclass
class ConversionPlan:
    meta: DatasetMeta
    encode: EncodeOptions
    splits: dict[str, list[SampleSource]]
    rejected: list[Rejection]  # found by the cheap checks (only kept with --skip-bad)
    # How the val split is encoded when it differs (Cityscapes --image-format jpg keeps val's
    # original PNGs: mIoU is then measured on the benchmark's own pixels)
    val_encode: EncodeOptions | None = None

    def encode_for(self, split: str) -> EncodeOptions:
        return self.val_encode if split == VAL and self.val_encode is not None else self.encode


def _path_exists(path: Path) -> bool:
    # Any non-directory entry counts (a FIFO or a symlink to a file too): reading it is the
    # worker's job, which reports unreadable files with the decoder's message.
    return path.exists() and not path.is_dir()


def _check_files(split: str, samples: list[SampleSource], problems: list[Rejection]) -> list[SampleSource]:
    kept = []
    for s in samples:
        bad = False
        if (msg := key_problem(s.key)) is not None:
            problems.append(Rejection(split, s.key, s.origin, msg))
            continue
        if not _path_exists(s.image):
            problems.append(Rejection(split, s.key, str(s.image), f"image does not exist (listed at {s.origin})"))
            bad = True
        if split in SPLITS_WITH_LABELS:
            if s.label is None or not _path_exists(s.label):
                problems.append(Rejection(split, s.key, str(s.label), f"label does not exist (listed at {s.origin})"))
                bad = True
        if not bad:
            kept.append(s)
    return kept


def _drop_duplicates(split: str, samples: list[SampleSource], problems: list[Rejection]) -> list[SampleSource]:
    first: dict[str, SampleSource] = {}
    kept = []
    for s in samples:
        if s.key in first:
            problems.append(Rejection(split, s.key, s.origin,
                                      f"duplicate id '{s.key}' (first listed at {first[s.key].origin})"))
            continue
        first[s.key] = s
        kept.append(s)
    return kept


# (split that keeps the sample, split that loses it): a sample must be in one split only;
# val wins (evaluation data must never be trained on), then labeled.
_OVERLAP_PRIORITY = ((VAL, LABELED), (VAL, UNLABELED), (LABELED, UNLABELED))


def _drop_overlaps(splits: dict[str, list[SampleSource]], problems: list[Rejection]) -> None:
    for keeper, loser in _OVERLAP_PRIORITY:
        if keeper not in splits or loser not in splits:
            continue
        kept_at = {s.key: s.origin for s in splits[keeper]}
        survivors = []
        for s in splits[loser]:
            if s.key in kept_at:
                problems.append(Rejection(loser, s.key, s.origin,
                                          f"id '{s.key}' is both {keeper} ({kept_at[s.key]}) and {loser}; "
                                          f"the splits must be disjoint"))
            else:
                survivors.append(s)
        splits[loser] = survivors


def finalize_plan(*, meta: DatasetMeta, encode: EncodeOptions, splits: dict[str, list[SampleSource]],
                  problems: list[Rejection], skip_bad: bool, val_encode: EncodeOptions | None = None) -> ConversionPlan:
    """Run the cheap checks, sort each split by key (so the shards do not depend on list order)
    and either fail with every problem found or keep them as rejections (``skip_bad``)."""
    problems = list(problems)
    checked = {name: _drop_duplicates(name, samples, problems) for name, samples in splits.items()}
    _drop_overlaps(checked, problems)
    checked = {name: _check_files(name, samples, problems) for name, samples in checked.items()}
    if problems and not skip_bad:
        raise problems_error(problems, hint="fix the input, or pass --skip-bad to leave these samples out "
                                            "(they are then listed in rejected.json)")
    ordered = {name: sorted(checked.get(name, []), key=lambda s: s.key) for name in SPLITS}
    return ConversionPlan(meta=meta, encode=encode, splits=ordered, rejected=problems, val_encode=val_encode)
