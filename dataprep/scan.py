"""Read shards back, independently of how they were written: Python's tarfile for members
and offsets, PIL for decoding. Shared by `verify` (problems) and `inspect` (statistics)."""

from __future__ import annotations

import io
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from fastforec.data.images import decode_problem
from fastforec.data.manifest import IMAGE_EXTS, LABEL_EXT, ShardInfo

from .shard_writer import file_sha256

INDEX_VERSION = "v1.2"
JSON_EXT = "json"
ALLOWED_EXTS = (*IMAGE_EXTS, LABEL_EXT, JSON_EXT)
INDEX_FIELDS = 4  # ext offset size name, per component
_BINS = 256


@dataclass(frozen=True)
class Problem:
    shard: str
    key: str | None
    problem: str

    def __str__(self) -> str:
        where = self.shard if self.key is None else f"{self.shard}: sample '{self.key}'"
        return f"{where}: {self.problem}"


@dataclass(frozen=True)
class ShardTask:
    root: Path
    split: str
    shard: ShardInfo
    num_classes: int
    ignore_index: int
    labeled: bool  # samples must carry a label (labeled, val) or must not (unlabeled)
    check_hash: bool = True
    decode: bool = True


@dataclass
class ShardScan:
    split: str
    file: str
    keys: list[str] = field(default_factory=list)
    image_sizes: Counter = field(default_factory=Counter)  # (H, W) -> count
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(_BINS, np.int64))
    payload_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Member:
    ext: str
    offset: int  # of the data, as DALI's index records it
    size: int
    name: str


def _split_name(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    key, _, ext = base.partition(".")
    return name[: len(name) - len(base)] + key, ext


def read_samples(tar_path: Path) -> tuple[list[tuple[str, list[Member]]], str | None]:
    """Members grouped into samples (consecutive members sharing a key), and the tar error
    that stopped reading early, if any."""
    samples: list[tuple[str, list[Member]]] = []
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = _split_name(info.name)
                if not samples or samples[-1][0] != key:
                    samples.append((key, []))
                samples[-1][1].append(Member(ext, info.offset_data, info.size, info.name))
    except (tarfile.TarError, OSError, EOFError) as e:
        return samples, f"{type(e).__name__}: {e}"
    return samples, None


def read_index(idx_path: Path) -> list[list[Member]]:
    """Parse a DALI webdataset index (``v1.2 N`` then one line per sample of ext/offset/size/name
    groups); raises ValueError on a malformed file."""
    lines = idx_path.read_text().splitlines()
    if not lines:
        raise ValueError("empty index")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION:
        raise ValueError(f"header '{lines[0]}' is not '{INDEX_VERSION} <count>'")
    if int(head[1]) != len(lines) - 1:
        raise ValueError(f"header announces {head[1]} samples, file lists {len(lines) - 1}")
    out = []
    for line in lines[1:]:
        fields = line.split()
        if not fields or len(fields) % INDEX_FIELDS:
            raise ValueError(f"line '{line[:80]}' is not groups of ext/offset/size/name")
        out.append([Member(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                    for i in range(0, len(fields), INDEX_FIELDS)])
    return out


def _open_image(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(io.BytesIO(data))
        img.load()
    return img


def _check_sample(task: ShardTask, scan: ShardScan, key: str, members: list[Member], blobs: dict[str, bytes]) -> None:
    def bad(problem: str) -> None:
        scan.problems.append(Problem(task.shard.file, key, problem))

    exts = [m.ext for m in members]
    if len(set(exts)) != len(exts):
        bad(f"repeated members {exts}")
    for ext in exts:
        if ext not in ALLOWED_EXTS:
            bad(f"unexpected member '{key}.{ext}' (shards hold only {', '.join(ALLOWED_EXTS)}; never pickles)")
    images = [e for e in exts if e in IMAGE_EXTS]
    if len(images) != 1:
        bad(f"has {len(images)} images ({images}); expected exactly one of {IMAGE_EXTS}")
        return
    if task.labeled != (LABEL_EXT in exts):
        bad("has no label" if task.labeled else "is in an unlabeled split but has a label")
    if not task.decode:
        return
    try:
        img = _open_image(blobs[images[0]])
    except Exception as e:  # any decoder failure is a finding, not a crash
        bad(f"image does not decode ({decode_problem(e, blobs[images[0]])})")
        return
    scan.image_sizes[(img.height, img.width)] += 1
    if LABEL_EXT not in blobs:
        return
    try:
        label = _open_image(blobs[LABEL_EXT])
    except Exception as e:
        bad(f"label does not decode ({decode_problem(e, blobs[LABEL_EXT])})")
        return
    if label.mode != "L":
        bad(f"label has mode {label.mode}; expected single-channel 8-bit ('L')")
        return
    if label.size != img.size:
        bad(f"label is {label.width}x{label.height} (WxH), image is {img.width}x{img.height}")
        return
    counts = np.bincount(np.asarray(label).ravel(), minlength=_BINS)
    values = np.flatnonzero(counts)
    wrong = [int(v) for v in values if v >= task.num_classes and v != task.ignore_index]
    if wrong:
        bad(f"label values {wrong} are neither a class id (0..{task.num_classes - 1}) nor {task.ignore_index}")
    scan.class_pixels += counts


def _check_index(task: ShardTask, scan: ShardScan, samples: list[tuple[str, list[Member]]]) -> None:
    idx = task.root / task.shard.index
    try:
        indexed = read_index(idx)
    except (OSError, ValueError) as e:
        scan.problems.append(Problem(task.shard.index, None, f"unreadable DALI index ({e})"))
        return
    actual = [sorted(members, key=lambda m: m.offset) for _, members in samples]
    if indexed != actual:
        first = next((i for i, (a, b) in enumerate(zip(indexed, actual)) if a != b), min(len(indexed), len(actual)))
        key = samples[first][0] if first < len(samples) else None
        scan.problems.append(Problem(task.shard.index, key, f"index does not match the tar at sample #{first} "
                                                            f"(regenerate it with wds2idx, or re-run dataprep)"))


def scan_shard(task: ShardTask) -> ShardScan:
    scan = ShardScan(split=task.split, file=task.shard.file)
    tar = task.root / task.shard.file
    for path in (tar, task.root / task.shard.index):
        if not path.is_file():
            scan.problems.append(Problem(path.name, None, "file is missing"))
    if scan.problems:
        return scan
    if task.shard.size is not None and (size := tar.stat().st_size) != task.shard.size:
        scan.problems.append(Problem(task.shard.file, None, f"is {size} bytes, the manifest says {task.shard.size}"))
    if task.check_hash and (sha := file_sha256(tar)) != task.shard.sha256:
        scan.problems.append(Problem(task.shard.file, None, f"sha256 {sha} does not match the manifest "
                                                            f"({task.shard.sha256}): the file was modified"))
    samples, error = read_samples(tar)
    if error:
        last = samples[-1][0] if samples else None
        scan.problems.append(Problem(task.shard.file, last, f"tar is unreadable after this point ({error})"))
    with open(tar, "rb") as f:
        for key, members in samples:
            blobs = {}
            for m in members:
                f.seek(m.offset)
                blobs[m.ext] = f.read(m.size)
                scan.payload_bytes += m.size
            scan.keys.append(key)
            _check_sample(task, scan, key, members, blobs)
    if task.check_hash:
        _check_index(task, scan, samples)
    if len(samples) != task.shard.num_samples:
        scan.problems.append(Problem(task.shard.file, None, f"holds {len(samples)} samples, the manifest says "
                                                            f"{task.shard.num_samples}"))
    return scan
