"""Writing the shard format that ``manifest.py`` describes and ``shard_reader.py`` reads.

The one writer of tar shards, DALI indexes and manifests: dataprep's conversion drives it (adding
its lock, shard caps and resume records, dataprep/shard_writer.py), and so do the benchmarks'
generated data sets (fastforec/bench/datasets.py) and the test suite's pixel-coded shard sets,
through :func:`write_dataset`.

A shard's bytes are a pure function of its samples, in order: tar headers carry a fixed mtime,
owner and mode, each sample's members are in webdataset's order (sorted by extension) and nothing
is encoded on the way (the samples hold the image and label bytes). The same samples therefore give
the same shard and sha256, which dataprep's resume relies on. Every file is written under a
temporary name (``.<name>.tmp-<pid>``) and renamed only when complete.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Protocol

from fastforec.atomic import TMP_MARKER, atomic_path, atomic_write_json, fsync_dir
from fastforec.data.manifest import LABEL_EXT, MANIFEST_NAME, Manifest, ShardInfo, SplitInfo
from fastforec.labels import IGNORE_INDEX

TAR_MTIME = 0  # fixed header mtime: the same samples give byte-identical shards (and sha256)
TAR_OWNER = "bigdata"  # user and group of every member (webdataset's defaults, which shards have always had)
TAR_MODE = 0o444
SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{6})\.(?P<ext>tar|idx)$")


def shard_stem(split: str, number: int) -> str:
    """``labeled-000003``: shard ``number`` of ``split``, before ``.tar`` / ``.idx``."""
    return f"{split}-{number:06d}"


class ShardSample(Protocol):
    """What a shard stores of a sample (dataprep's EncodedSample is one, :class:`Sample` another)."""

    @property
    def key(self) -> str: ...  # the image id, no dots

    @property
    def image(self) -> bytes: ...

    @property
    def image_ext(self) -> str: ...  # one of manifest.IMAGE_EXTS

    @property
    def label(self) -> bytes | None: ...  # label PNG (train ids), None in unlabeled splits


@dataclass(frozen=True)
class Sample:
    key: str
    image: bytes
    image_ext: str  # "jpg" or "png"
    label: bytes | None = None


class _HashingFile:
    """A write-only file object that hashes what passes through (no second read of the shard)."""

    def __init__(self, f: BinaryIO):
        self._f: BinaryIO | None = f
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        if self._f is None:  # discarded: the tar may still flush its trailer, into nowhere
            return len(data)
        self.sha256.update(data)
        return self._f.write(data)

    def detach(self) -> None:
        self._f = None

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()


class ShardTar:
    """Samples into one tar stream on the binary file ``f``, hashed on the way."""

    def __init__(self, f: BinaryIO):
        # Imported here: webdataset imports torch, which `dataprep --help`, the planners and the
        # encoding workers do not need.
        from webdataset import TarWriter

        self._hashing = _HashingFile(f)
        self._tar = TarWriter(self._hashing, encoder=False, mtime=TAR_MTIME, user=TAR_OWNER, group=TAR_OWNER,
                              mode=TAR_MODE)
        self.num_samples = 0
        self.payload_bytes = 0  # image and label bytes, without tar headers and padding

    def write(self, sample: ShardSample) -> None:
        obj = {"__key__": sample.key, sample.image_ext: sample.image}
        if sample.label is not None:
            obj[LABEL_EXT] = sample.label
        self.payload_bytes += self._tar.write(obj)
        self.num_samples += 1

    def close(self) -> str:
        """Write the tar's trailer; returns the sha256 of everything written."""
        self._tar.close()
        return self._hashing.sha256.hexdigest()

    def abandon(self) -> None:
        """Close without writing anything more to ``f``."""
        self._hashing.detach()
        self._tar.close()


class ShardFile:
    """One shard written sample by sample under a temporary name: :meth:`commit` makes it durable
    and renames it to ``path``, :meth:`discard` removes it. A failed write raises its OSError."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")
        self._file = open(self.tmp, "wb")
        self._tar = ShardTar(self._file)

    @property
    def num_samples(self) -> int:
        return self._tar.num_samples

    @property
    def payload_bytes(self) -> int:
        return self._tar.payload_bytes

    def write(self, sample: ShardSample) -> None:
        self._tar.write(sample)

    def commit(self) -> str:
        """Finish the tar, make it durable, rename it into place; returns its sha256."""
        sha256 = self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return sha256

    def discard(self) -> None:
        self._tar.abandon()
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def index_path(tar: Path) -> Path:
    return tar.with_suffix(".idx")


def write_index(tar: Path, idx: Path) -> None:
    """DALI's own indexer (``wds2idx``), into a temporary file renamed when complete."""
    from wds2idx import IndexCreator  # ships with the nvidia-dali wheel

    with atomic_path(idx) as tmp:
        with IndexCreator(str(tar), str(tmp), verbose=False) as creator:
            creator.create_index()


def write_shard(path: Path, samples: Iterable[ShardSample]) -> ShardInfo:
    """One complete shard and its index, each written under a temporary name and renamed; a write
    the file system refuses is a :class:`fastforec.atomic.WriteError`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        tar = ShardTar(f)
        for sample in samples:
            tar.write(sample)
        sha256 = tar.close()
    index = index_path(path)
    write_index(path, index)
    return ShardInfo(file=path.name, index=index.name, num_samples=tar.num_samples, sha256=sha256,
                     size=path.stat().st_size)


def write_manifest(manifest: Manifest) -> None:
    """``manifest.json`` into its root, atomically: written last, it says the shards are complete."""
    atomic_write_json(manifest.root / MANIFEST_NAME, manifest.to_dict())


def write_dataset(out_dir: str | Path, *, splits: dict[str, list[Sample]], class_names: list[str],
                  palette: list[tuple[int, int, int]], foreground: list[int], source: dict[str, Any],
                  dataset: str = "synth", shard_size: int = 16) -> Manifest:
    """Samples made in memory as a shard directory: ``splits`` as shards of ``shard_size`` samples
    under ``out_dir``, the manifest (``source`` says what made them) last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    infos = {}
    for split, samples in splits.items():
        shards = [write_shard(out / f"{shard_stem(split, i // shard_size)}.tar", samples[i: i + shard_size])
                  for i in range(0, len(samples), shard_size)]
        infos[split] = SplitInfo(tuple(shards))
    manifest = Manifest(root=out, dataset=dataset, num_classes=len(class_names), class_names=tuple(class_names),
                        palette=tuple(palette), ignore_index=IGNORE_INDEX, foreground_classes=tuple(foreground),
                        splits=infos, source=source)
    write_manifest(manifest)
    return Manifest.load(out)
