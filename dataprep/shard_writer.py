"""dataprep's side of writing shards: shard caps, per-shard completion records, resume.

The shard format itself (tar, DALI index, manifest) is written by fastforec/data/shard_writer.py;
this module decides which samples go into which shard and records what each complete shard holds.

Resumability rests on three facts:

1. Shard contents are a pure function of the inputs: samples are processed in plan order,
   tar headers carry a fixed mtime/owner, and images/labels are encoded deterministically.
2. A shard is written under a temporary name and renamed only when complete; its index is
   then written the same way, and its record (``.dataprep/state/<shard>.json``) last.
3. A record says which plan range ``[start, end)`` the shard holds, the stat signature of
   those inputs and the encoding options. On a re-run, leading shards whose record still
   matches the plan and whose sha256 still matches the bytes on disk are kept; conversion
   resumes after the last of them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastforec.atomic import atomic_write_json
from fastforec.data.shard_reader import file_sha256  # the reader checks what the writer recorded: one hash
from fastforec.data.shard_writer import SHARD_NAME, ShardFile, index_path, shard_stem, write_index

from .encode import EncodedSample
from .errors import Rejection

STATE_DIR = ".dataprep/state"


@dataclass(frozen=True)
class ShardCaps:
    """A shard is closed as soon as it holds ``max_samples`` samples or ``max_bytes`` payload."""

    max_samples: int
    max_bytes: int


@dataclass(frozen=True)
class ShardRecord:
    file: str
    index: str
    num_samples: int
    sha256: str
    start: int  # plan range [start, end) this shard consumed (written and rejected samples)
    end: int
    sources: str  # digest of the inputs' stat signatures over that range
    options: str  # digest of the encoding options and shard caps
    rejected: list[dict[str, Any]] = field(default_factory=list)


def state_path(out: Path, stem: str) -> Path:
    return out / STATE_DIR / f"{stem}.json"


def sources_digest(signatures: list[list[Any]]) -> str:
    return hashlib.sha256(json.dumps(signatures).encode()).hexdigest()


def _load_record(path: Path) -> ShardRecord | None:
    try:
        return ShardRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # missing or unreadable: the shard is simply redone


def completed_prefix(*, out: Path, split: str, signatures: list[list[Any]], options: str) -> list[ShardRecord]:
    """The leading shards of ``split`` already on disk that match the current plan byte for byte."""
    records: list[ShardRecord] = []
    pos = 0
    while pos < len(signatures):
        stem = shard_stem(split, len(records))
        rec = _load_record(state_path(out, stem))
        if (rec is None or rec.options != options or rec.start != pos or not pos < rec.end <= len(signatures)
                or rec.sources != sources_digest(signatures[rec.start:rec.end])):
            break
        tar, idx = out / rec.file, out / rec.index
        if not (tar.is_file() and idx.is_file()) or file_sha256(tar) != rec.sha256:
            break
        records.append(rec)
        pos = rec.end
    return records


class SplitShardWriter:
    """Consumes encoded samples and rejections of one split, in plan order, from ``start``."""

    def __init__(self, *, out: Path, split: str, signatures: list[list[Any]], options: str,
                 caps: ShardCaps, first_shard: int, start: int):
        self._out = out
        self._split = split
        self._signatures = signatures
        self._options = options
        self._caps = caps
        self._next_shard = first_shard
        self._range_start = start
        self._pos = start
        self._shard: ShardFile | None = None  # holds the plan range from _range_start
        self._pending_rejections: list[Rejection] = []
        self.records: list[ShardRecord] = []
        self.rejections: list[Rejection] = []

    def consume(self, item: EncodedSample | Rejection) -> None:
        self._pos += 1
        if isinstance(item, Rejection):
            self._pending_rejections.append(item)
            self.rejections.append(item)
            return
        if self._shard is None:
            self._shard = ShardFile(self._out / f"{shard_stem(self._split, self._next_shard)}.tar")
        self._shard.write(item)
        if self._shard.num_samples >= self._caps.max_samples or self._shard.payload_bytes >= self._caps.max_bytes:
            self._commit()

    def _commit(self) -> None:
        shard = self._shard
        assert shard is not None
        # A stale record must not vouch for the new bytes if we die between rename and record.
        record_path = state_path(self._out, shard.path.stem)
        record_path.unlink(missing_ok=True)
        sha = shard.commit()
        idx = index_path(shard.path)
        write_index(shard.path, idx)
        record = ShardRecord(file=shard.path.name, index=idx.name, num_samples=shard.num_samples, sha256=sha,
                             start=self._range_start, end=self._pos,
                             sources=sources_digest(self._signatures[self._range_start:self._pos]),
                             options=self._options,
                             rejected=[r.to_dict() for r in self._pending_rejections])
        atomic_write_json(record_path, asdict(record))
        self.records.append(record)
        self._shard = None
        self._next_shard += 1
        self._range_start = self._pos
        self._pending_rejections = []

    def close(self) -> list[ShardRecord]:
        """Commit the last, partly filled shard. Trailing rejections after it belong to no shard:
        a re-run re-checks those samples, which is cheap and gives the same verdict."""
        if self._shard is not None:
            self._commit()
        return self.records

    def abort(self) -> None:
        if self._shard is not None:
            self._shard.discard()
            self._shard = None

    @property
    def num_shards(self) -> int:
        return self._next_shard


def remove_stale_shards(*, out: Path, split: str, keep: int) -> None:
    """Delete shards (and their index and record) of ``split`` numbered ``keep`` or above:
    leftovers of an earlier run with more shards, which no manifest may name."""
    for path in out.iterdir():
        m = SHARD_NAME.match(path.name)
        if m and m["split"] == split and int(m["index"]) >= keep:
            path.unlink(missing_ok=True)
            state_path(out, path.name.rsplit(".", 1)[0]).unlink(missing_ok=True)


def remove_temporaries(out: Path) -> None:
    """Temporary files of an interrupted run (kill -9 leaves them behind)."""
    for directory in (out, out / STATE_DIR):
        if directory.is_dir():
            for path in directory.glob(".*.tmp-*"):
                path.unlink(missing_ok=True)
