"""Run a ConversionPlan: encode samples in parallel, write shards in plan order, resume from
complete shards, and write rejected.json and (last) manifest.json."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from rich.console import Console

from fastforec.atomic import atomic_write_json
from fastforec.data.manifest import SPLITS, Manifest, ShardInfo, SplitInfo
from fastforec.data.shard_writer import write_manifest
from fastforec.errors import foreign_entries
from fastforec.formats import sig
from fastforec.labels import IGNORE_INDEX

from .conversion_plan import ConversionPlan
from .encode import EncodedSample, SampleTask, encode_sample
from .errors import DataprepError, Rejection
from .progress import make_console, progress_bar
from .shard_writer import (
    STATE_DIR,
    ShardCaps,
    ShardRecord,
    SplitShardWriter,
    completed_prefix,
    remove_stale_shards,
    remove_temporaries,
)

MANIFEST = "manifest.json"
REJECTED = "rejected.json"
# dataprep's own folder inside --out (lock and shard records), made before any other file: it
# marks an output directory as one dataprep wrote, which a re-run may update.
MARK = ".dataprep"
LOCK = f"{MARK}/lock"
# Bump when the shard bytes for the same inputs change (encoding, tar layout): old shards are
# then redone instead of being trusted.
SHARD_LAYOUT_VERSION = 2  # 2: EXIF-rotated images are stored as displayed (re-encoded as PNG)
DEFAULT_SHARD_SAMPLES = 5000
DEFAULT_SHARD_MB = 256.0
_BYTES_PER_MB = 1 << 20
# Tasks handed to a worker at once: large enough to amortise IPC, small enough that the
# in-order writer never waits long behind one slow worker.
_MAX_CHUNK = 16
_CHUNKS_PER_WORKER = 8


@dataclass(frozen=True)
class RunOptions:
    out: Path
    workers: int
    caps: ShardCaps
    skip_bad: bool = False
    quiet: bool = False
    force: bool = False  # write into a non-empty --out that dataprep did not make


@dataclass(frozen=True)
class ConversionResult:
    manifest: Manifest
    encoded: int  # samples processed in this run (the rest came from complete shards)
    reused_shards: int
    rejected: list[Rejection]
    seconds: float


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


def make_caps(*, shard_samples: int, shard_mb: float) -> ShardCaps:
    if shard_samples < 1:
        raise DataprepError(f"--shard-samples must be >= 1, got {shard_samples}")
    if shard_mb <= 0:
        raise DataprepError(f"--shard-mb must be > 0, got {shard_mb}")
    return ShardCaps(max_samples=shard_samples, max_bytes=int(shard_mb * _BYTES_PER_MB))


@contextlib.contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """One dataprep per output directory. flock is released by the kernel even on kill -9."""
    path = out / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataprepError(f"'{out}' is being written by another dataprep process "
                                f"(lock {path}); wait for it or choose another --out") from None
        yield


def _options_digest(plan: ConversionPlan, caps: ShardCaps, split: str) -> str:
    meta = plan.meta
    blob = json.dumps([SHARD_LAYOUT_VERSION, plan.encode_for(split).digest(), caps.max_samples, caps.max_bytes,
                       meta.num_classes]).encode()
    return hashlib.sha256(blob).hexdigest()


def _results(tasks: list[SampleTask], workers: int) -> Iterator[EncodedSample | Rejection]:
    if workers <= 1 or len(tasks) <= 1:
        yield from map(encode_sample, tasks)
        return
    chunk = max(1, min(_MAX_CHUNK, len(tasks) // (workers * _CHUNKS_PER_WORKER)))
    # forkserver: workers start from a clean process, not a fork of a parent that may hold
    # threads (the progress bar, or torch/DALI pools when called from a test or a notebook).
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(processes=min(workers, len(tasks))) as pool:
        yield from pool.imap(encode_sample, tasks, chunksize=chunk)


def _rejected_sort_key(r: Rejection) -> tuple[Any, ...]:
    # Plan order, so a resumed run writes the same rejected.json as an uninterrupted one.
    return (SPLITS.index(r.split) if r.split in SPLITS else len(SPLITS), r.key, r.file, r.problem)


def _build_manifest(plan: ConversionPlan, out: Path, records: dict[str, list[ShardRecord]],
                    num_rejected: int) -> Manifest:
    meta = plan.meta
    splits = {name: SplitInfo(tuple(ShardInfo(file=r.file, index=r.index, num_samples=r.num_samples,
                                              sha256=r.sha256, size=(out / r.file).stat().st_size) for r in recs))
              for name, recs in records.items()}
    source = {"tool": "dataprep", **meta.source, "sample_order": "sorted by id", "rejected": num_rejected}
    return Manifest(root=out, dataset=meta.dataset, num_classes=meta.num_classes, class_names=meta.class_names,
                    palette=meta.palette, ignore_index=IGNORE_INDEX, foreground_classes=meta.foreground_classes,
                    splits=splits, source=source)


def _prepare_output(out: Path) -> None:
    # From here until the end, no manifest may claim the directory is complete.
    (out / MANIFEST).unlink(missing_ok=True)
    (out / REJECTED).unlink(missing_ok=True)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)


def _drain(results: Iterable[EncodedSample | Rejection], writers: dict[str, SplitShardWriter], *,
           skip_bad: bool, advance: Callable[[], None]) -> None:
    for item in results:
        if isinstance(item, Rejection) and not skip_bad:
            raise DataprepError(f"{item}\nfix the input, or pass --skip-bad to leave bad samples out "
                                f"(they are then listed in rejected.json)")
        writers[item.split].consume(item)
        advance()


@dataclass
class _Resume:
    """Per split: the complete shards kept from earlier runs and the writer that continues after
    them; plus the samples still to encode, in plan order."""

    prefixes: dict[str, list[ShardRecord]]
    writers: dict[str, SplitShardWriter]
    tasks: list[SampleTask]

    @property
    def reused(self) -> int:
        return sum(len(p) for p in self.prefixes.values())


def _resume(plan: ConversionPlan, out: Path, caps: ShardCaps) -> _Resume:
    state = _Resume(prefixes={}, writers={}, tasks=[])
    for split, samples in plan.splits.items():
        digest = _options_digest(plan, caps, split)
        signatures = [s.stat_signature() for s in samples]
        prefix = completed_prefix(out=out, split=split, signatures=signatures, options=digest)
        start = prefix[-1].end if prefix else 0
        state.prefixes[split] = prefix
        state.writers[split] = SplitShardWriter(out=out, split=split, signatures=signatures, options=digest,
                                                caps=caps, first_shard=len(prefix), start=start)
        state.tasks += [SampleTask(split=split, source=s, options=plan.encode_for(split)) for s in samples[start:]]
    return state


def _all_rejections(plan: ConversionPlan, state: _Resume) -> list[Rejection]:
    """Cheap-check rejections, those recorded with reused shards, and this run's."""
    rejected = list(plan.rejected)
    for split, writer in state.writers.items():
        rejected += [Rejection(**r) for rec in state.prefixes[split] for r in rec.rejected]
        rejected += writer.rejections
    return sorted(rejected, key=_rejected_sort_key)


def _encode_and_write(state: _Resume, *, workers: int, skip_bad: bool, console: Console,
                      description: str) -> tuple[dict[str, list[ShardRecord]], float]:
    """(shard records per split, seconds the conversion itself took: the bar's interval)."""
    results = _results(state.tasks, workers)
    try:
        t0 = time.perf_counter()
        with progress_bar(console) as progress:
            bar = progress.add_task(description, total=len(state.tasks))
            _drain(results, state.writers, skip_bad=skip_bad, advance=lambda: progress.advance(bar))
        records = {split: state.prefixes[split] + writer.close() for split, writer in state.writers.items()}
        return records, time.perf_counter() - t0
    finally:
        results.close()  # stops the worker pool now, not whenever the generator is collected
        for writer in state.writers.values():
            writer.abort()  # a no-op after close(); on error, removes the half-written shard


def refuse_foreign_output(out: Path, *, force: bool) -> None:
    """A non-empty --out without dataprep's mark holds someone else's files: the conversion would
    replace a manifest.json, and delete what looks like a stale shard (``labeled-000000.tar``).
    Refused unless ``force``; hidden entries (``.DS_Store``) do not count, and none are touched."""
    if force or not out.is_dir() or (out / MARK).is_dir():
        return
    if shown := foreign_entries(out):
        raise DataprepError(f"--out '{out}' is not empty and was not written by dataprep (it holds {shown}); "
                            f"dataprep would replace or delete such files: choose a new or empty --out, or "
                            f"pass --force to write into it anyway")


def mark_output(out: Path) -> None:
    """For commands that write plain files into --out (synth, splits), once they have written
    them: mark the directory as dataprep's, so that a re-run of the same command goes ahead.
    Marked after the work, so that bad input (checked first) leaves no directory behind."""
    (out / MARK).mkdir(parents=True, exist_ok=True)


def run_conversion(plan: ConversionPlan, options: RunOptions) -> ConversionResult:
    out = options.out
    if out.exists() and not out.is_dir():
        raise DataprepError(f"--out '{out}' exists and is not a directory")
    refuse_foreign_output(out, force=options.force)
    out.mkdir(parents=True, exist_ok=True)
    console = make_console(quiet=options.quiet)
    t0 = time.perf_counter()
    with _output_lock(out):
        _prepare_output(out)
        state = _resume(plan, out, options.caps)
        if state.reused:
            console.print(f"resuming: {state.reused} complete shard(s) kept, {len(state.tasks)} sample(s) to convert")
        records, converting = _encode_and_write(state, workers=options.workers, skip_bad=options.skip_bad,
                                                console=console, description=f"converting {plan.meta.dataset}")
        for split, writer in state.writers.items():
            remove_stale_shards(out=out, split=split, keep=writer.num_shards)
        rejected = _all_rejections(plan, state)
        if options.skip_bad:
            atomic_write_json(out / REJECTED, [r.to_dict() for r in rejected])
        manifest = _build_manifest(plan, out, records, len(rejected))
        write_manifest(manifest)  # last: the directory is now complete
    seconds = time.perf_counter() - t0
    # the rate over the conversion itself, as the bar showed it; the total adds planning, resume
    # checks, hashing and the manifest
    rate = len(state.tasks) / converting if converting > 0 else 0.0
    console.print(f"{len(state.tasks)} image(s) converted in {sig(converting)} s ({sig(rate)} images/s), "
                  f"{seconds:.1f} s in all; {state.reused} shard(s) reused; {len(rejected)} rejected; "
                  f"manifest: {out / MANIFEST}", soft_wrap=True)
    return ConversionResult(manifest=manifest, encoded=len(state.tasks), reused_shards=state.reused,
                            rejected=rejected, seconds=seconds)
