"""Random access to the samples of one split, straight from the tar shards through their index.

The DALI pipelines are fed by ``external_source`` instead of ``readers.webdataset`` so that the
order of samples is a pure function of (seed, epoch, rank): a global permutation per epoch, no
shuffle buffer, and a resumed run repositions by arithmetic instead of replaying a reader. The
index files (``wds2idx`` format ``v1.2``) give byte offsets, so reading a sample is a slice of a
memory map: no tar parsing on the hot path and no copy until DALI copies the bytes in.

Corruption is detected before training by :func:`verify_shards` (size and SHA-256 against the
manifest), and while reading where it is cheap: the index must fit inside the shard, and the tar
header in front of each member must carry that member's name. Every failure raises
:class:`ShardError` naming the shard (and the sample, when one is at fault).
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from fastforec.data.images import decode_problem
from fastforec.data.manifest import IMAGE_EXTS, LABEL_EXT, Manifest, ManifestError, ShardInfo

INDEX_VERSION = "v1.2"
TAR_BLOCK = 512
TAR_NAME_FIELD = 100  # bytes of the member name at the start of a ustar header
HASH_CHUNK = 1 << 20  # bytes read per hashing call
MAX_PROBLEMS_SHOWN = 10  # damaged shards listed in one message


class ShardError(ManifestError):
    """A shard or its index is missing, truncated or does not match the manifest."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)  # releases the GIL: shards hash in parallel threads
    return h.hexdigest()


def _shard_problem(manifest: Manifest, shard: ShardInfo, *, sha256: bool) -> str | None:
    path = manifest.root / shard.file
    for f in (path, manifest.root / shard.index):
        if not f.is_file():
            return f"shard file '{f}' is missing"
    size = path.stat().st_size
    if shard.size is not None and size != shard.size:
        return f"shard '{path}' is {size} bytes, the manifest says {shard.size}: it was truncated or replaced"
    if sha256 and (digest := file_sha256(path)) != shard.sha256:
        return (f"shard '{path}' has sha256 {digest}, the manifest says {shard.sha256}: its bytes changed "
                f"since dataprep wrote it")
    return None


def verify_shards(manifest: Manifest, splits: Sequence[str], *, sha256: bool) -> None:
    """Check the shards of ``splits`` against the manifest before any training: each exists with
    its index, has the recorded size and (``sha256=True``) the recorded SHA-256. A corrupt JPEG
    would otherwise decode with a warning into a wrong image and train silently. Raises
    :class:`ShardError` listing every damaged shard."""
    shards = [s for name in splits for s in manifest.split(name).shards]
    workers = max(1, min(len(shards), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        problems = [p for p in pool.map(lambda s: _shard_problem(manifest, s, sha256=sha256), shards) if p]
    problems = [f"{manifest.root / 'manifest.json'}: {p}" for p in manifest.count_problems()] + problems
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN] + ([f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more"]
                                                 if len(problems) > MAX_PROBLEMS_SHOWN else [])
        raise ShardError(f"{len(problems)} problem(s) with the shards in '{manifest.root}':\n  " + "\n  ".join(shown)
                         + f"\nre-run dataprep for '{manifest.root}' (`dataprep verify {manifest.root}` lists "
                           f"every problem)")


@dataclass(frozen=True)
class Member:
    offset: int  # of the data, i.e. just after the 512-byte tar header
    size: int
    name: str


@dataclass(frozen=True)
class SampleRef:
    shard: int  # position in the split's shard list
    key: str
    image: Member
    label: Member | None


def _parse_index(index_path: Path, shard_path: Path, shard_size: int) -> list[dict[str, Member]]:
    """Read one ``wds2idx`` index: a header ``v1.2 N`` then one line per sample of
    ``ext offset size name`` groups."""
    try:
        lines = index_path.read_text().splitlines()
    except OSError as e:
        raise ShardError(f"index '{index_path}' of shard '{shard_path}' cannot be read ({e})") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ShardError(f"index '{index_path}' of shard '{shard_path}': bad header {lines[:1]}, "
                         f"expected '{INDEX_VERSION} <count>'; re-run dataprep")
    samples: list[dict[str, Member]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) % 4:
            raise ShardError(f"index '{index_path}' line {lineno}: expected groups of 'ext offset size name'")
        members = {}
        for i in range(0, len(parts), 4):
            ext, offset, size, name = parts[i], int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]
            if offset < TAR_BLOCK or offset + size > shard_size:
                raise ShardError(f"shard '{shard_path}' is truncated or does not match its index "
                                 f"'{index_path}' (member '{name}' at {offset}+{size} > {shard_size} bytes); "
                                 f"re-run dataprep")
            members[ext] = Member(offset=offset, size=size, name=name)
        samples.append(members)
    if len(samples) != int(head[1]):
        raise ShardError(f"index '{index_path}' announces {head[1]} samples but lists {len(samples)}")
    return samples


def _image_member(members: dict[str, Member], *, where: str) -> Member:
    for ext in IMAGE_EXTS:
        if ext in members:
            return members[ext]
    raise ShardError(f"{where}: sample has no image (extensions {sorted(members)}, expected one of {IMAGE_EXTS})")


class SplitReader:
    """All samples of one split of a manifest, addressable by a global index 0..N-1."""

    def __init__(self, manifest: Manifest, split: str, *, with_labels: bool) -> None:
        manifest.check_files(split)  # a missing shard or index is named before any work starts
        self.split = split
        self.paths = manifest.shard_paths(split)
        self._maps: list[mmap.mmap | None] = [None] * len(self.paths)
        self._sizes: dict[int, tuple[int, int]] = {}
        self.samples: list[SampleRef] = []
        for shard_no, (info, path, index) in enumerate(zip(manifest.split(split).shards, self.paths,
                                                           manifest.index_paths(split))):
            entries = _parse_index(index, path, path.stat().st_size)
            if len(entries) != info.num_samples:
                raise ShardError(f"shard '{path}' has {len(entries)} samples in its index, the manifest says "
                                 f"{info.num_samples}; re-run dataprep")
            for members in entries:
                where = f"shard '{path}'"
                image = _image_member(members, where=where)
                label = members.get(LABEL_EXT)
                if with_labels and label is None:
                    raise ShardError(f"{where}: sample '{image.name}' has no '{LABEL_EXT}' (split '{split}' "
                                     f"needs labels)")
                key = image.name.split(".", 1)[0]
                self.samples.append(SampleRef(shard=shard_no, key=key, image=image,
                                              label=label if with_labels else None))
        if not self.samples:
            raise ShardError(f"split '{split}' of '{manifest.root}' has no samples")

    def __len__(self) -> int:
        return len(self.samples)

    def _map(self, shard: int) -> mmap.mmap:
        m = self._maps[shard]
        if m is None:
            with open(self.paths[shard], "rb") as f:
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[shard] = m
        return m

    def _read(self, shard: int, member: Member) -> np.ndarray:
        m = self._map(shard)
        header = m[member.offset - TAR_BLOCK: member.offset - TAR_BLOCK + TAR_NAME_FIELD]
        if header.split(b"\0", 1)[0].decode(errors="replace") != member.name:
            raise ShardError(f"shard '{self.paths[shard]}' is corrupt: no tar member '{member.name}' at "
                             f"offset {member.offset - TAR_BLOCK}; re-run dataprep")
        return np.frombuffer(m, dtype=np.uint8, count=member.size, offset=member.offset).copy()

    def image_bytes(self, index: int) -> np.ndarray:
        ref = self.samples[index]
        return self._read(ref.shard, ref.image)

    def label_bytes(self, index: int) -> np.ndarray:
        ref = self.samples[index]
        if ref.label is None:
            raise ShardError(f"split '{self.split}' was opened without labels")
        return self._read(ref.shard, ref.label)

    def image_size(self, index: int, data: np.ndarray) -> tuple[int, int]:
        """(height, width) from the encoded header, cached: the crop geometry is drawn in Python
        before DALI decodes, and a header parse is ~1000x cheaper than a decode."""
        if index not in self._sizes:
            raw = data.tobytes()
            try:
                with Image.open(io.BytesIO(raw)) as im:
                    w, h = im.size
            except (UnidentifiedImageError, OSError) as e:
                ref = self.samples[index]
                raise ShardError(f"shard '{self.paths[ref.shard]}' is corrupt: image '{ref.image.name}' "
                                 f"(sample '{ref.key}') cannot be read ({decode_problem(e, raw)}); "
                                 f"re-run dataprep") from None
            self._sizes[index] = (h, w)
        return self._sizes[index]

    def first_undecodable(self, indices: list[int]) -> str | None:
        """Fully decode the given samples with PIL and describe the first that fails. Only on the
        error path: DALI reports a decode failure per batch, not per sample."""
        for i in indices:
            ref = self.samples[i]
            members = [ref.image] + ([ref.label] if ref.label is not None else [])
            for member in members:
                raw = self._read(ref.shard, member).tobytes()
                try:
                    with Image.open(io.BytesIO(raw)) as im:
                        im.load()
                except (OSError, SyntaxError, ValueError) as e:
                    return (f"shard '{self.paths[ref.shard]}' is corrupt: '{member.name}' (sample '{ref.key}') "
                            f"cannot be decoded ({decode_problem(e, raw)}); re-run dataprep")
        return None

    def describe(self, indices: list[int]) -> str:
        """Human-readable 'shard: keys' for an error message about a batch."""
        by_shard: dict[int, list[str]] = {}
        for i in indices:
            ref = self.samples[i]
            by_shard.setdefault(ref.shard, []).append(ref.key)
        return "; ".join(f"shard '{self.paths[s]}' (samples {', '.join(keys[:4])}"
                         f"{', ...' if len(keys) > 4 else ''})" for s, keys in by_shard.items())

    def close(self) -> None:
        for i, m in enumerate(self._maps):
            if m is not None:
                m.close()
                self._maps[i] = None
