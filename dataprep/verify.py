"""`dataprep verify DIR`: re-hash every shard against the manifest, re-check the DALI index,
decode every sample, check label values, sample counts and split disjointness."""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

from fastforec.data.manifest import Manifest, ManifestError

from .conversion_plan import SPLITS_WITH_LABELS
from .scan import Problem, ShardScan, ShardTask, scan_shard


@dataclass(frozen=True)
class VerifyReport:
    problems: list[Problem]
    num_shards: int
    num_samples: int

    @property
    def ok(self) -> bool:
        return not self.problems


def shard_tasks(manifest: Manifest, *, check_hash: bool, decode: bool) -> list[ShardTask]:
    return [ShardTask(root=manifest.root, split=split, shard=shard, num_classes=manifest.num_classes,
                      ignore_index=manifest.ignore_index, labeled=split in SPLITS_WITH_LABELS,
                      check_hash=check_hash, decode=decode)
            for split, info in manifest.splits.items() for shard in info.shards]


def scan_all(tasks: list[ShardTask], *, workers: int) -> list[ShardScan]:
    if workers <= 1 or len(tasks) <= 1:
        return [scan_shard(t) for t in tasks]
    with multiprocessing.get_context("forkserver").Pool(min(workers, len(tasks))) as pool:
        return pool.map(scan_shard, tasks, chunksize=1)


def _disjointness(scans: list[ShardScan]) -> list[Problem]:
    seen: dict[str, str] = {}
    problems = []
    for scan in scans:
        for key in scan.keys:
            if key in seen:
                problems.append(Problem(scan.file, key, f"id also in {seen[key]}: a sample must be in one split "
                                                        f"and one shard only"))
            else:
                seen[key] = scan.file
    return problems


def verify_dataset(root: Path, *, workers: int) -> VerifyReport:
    try:
        manifest = Manifest.load(root)
    except ManifestError as e:
        return VerifyReport(problems=[Problem("manifest.json", None, str(e))], num_shards=0, num_samples=0)
    tasks = shard_tasks(manifest, check_hash=True, decode=True)
    scans = scan_all(tasks, workers=workers)
    problems = ([Problem("manifest.json", None, p) for p in manifest.count_problems()]
                + [p for scan in scans for p in scan.problems] + _disjointness(scans))
    return VerifyReport(problems=problems, num_shards=len(tasks), num_samples=sum(len(s.keys) for s in scans))
