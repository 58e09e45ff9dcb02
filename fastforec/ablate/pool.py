"""Running a study's training processes: ``fastforec/train.py`` per run, ``--jobs`` at a time; a
finished run is skipped, one with a checkpoint is resumed, a failed one is reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fastforec.ablate.method_names import method_overrides
from fastforec.ablate.plan import Run
from fastforec.atomic import atomic_write_json
from fastforec.provenance import provenance

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
OMP_WAIT_POLICY = "PASSIVE"
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
PROVENANCE_FILE = "provenance.json"  # in each run directory: what its result depends on


@dataclass
class Outcome:
    run: Run
    status: str  # "done" (earlier), "ran", "failed"
    seconds: float = 0.0
    log: str = ""


def train_command(run: Run, *, config: Path, run_dir: Path, shards: Path, overrides: Sequence[str],
                  resume: bool) -> list[str]:
    settings = [*method_overrides(run.method), f"train.seed={run.seed}", f"data.root={shards}",
                f"train.name={run.name}", *overrides]
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--config", str(config), "--run-dir", str(run_dir)]
    for item in settings:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def child_env(torch_threads: int | None) -> dict[str, str]:
    """No launcher variables from this process (a child is a world of one of its own).

    OpenMP threads wait passively unless the user says otherwise: with libgomp's default
    (active spinning after every parallel region) a CPU shared with other processes made the
    training steps 10-30x slower in our measurements (docs/results.md).
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    if torch_threads is not None:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    return env


def has_checkpoint(run_dir: Path) -> bool:
    from fastforec.checkpoint_files import list_checkpoints

    return bool(list_checkpoints(run_dir / "checkpoints"))


def execute(run: Run, *, out: Path, config: Path, shards: Path, overrides: Sequence[str],
            torch_threads: int | None) -> Outcome:
    run_dir = out / "runs" / run.name
    if (run_dir / "results.json").is_file():
        return Outcome(run, "done")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "train.log"
    resume = has_checkpoint(run_dir)
    if not resume:
        # A killed attempt without a checkpoint starts over: drop its history, or the new run's
        # records would be appended after it.
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    cmd = train_command(run, config=config, run_dir=run_dir, shards=shards, overrides=overrides, resume=resume)
    # What this result depends on (code, packages, CPU, shards), one record per attempt: a run
    # resumed on another machine is no longer a one-machine result, and this shows it.
    record = run_dir / PROVENANCE_FILE
    attempts = json.loads(record.read_text()) if record.is_file() else []
    atomic_write_json(record, attempts + [{**provenance(data_root=shards), "resumed": resume}])
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(torch_threads)).returncode
    seconds = time.perf_counter() - start
    ok = code == 0 and (run_dir / "results.json").is_file()
    return Outcome(run, "ran" if ok else "failed", seconds, str(log))


def run_all(runs: Sequence[Run], *, out: Path, config: Path, shards: dict[str, Path], overrides: Sequence[str],
            torch_threads: int | None, jobs: int, console: Any) -> list[Outcome]:
    """Every run, ``jobs`` subprocesses at a time; progress is printed in completion order."""
    failed = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(execute, run, out=out, config=config, shards=shards[run.data], overrides=overrides,
                               torch_threads=torch_threads): run for run in runs}
        for i, future in enumerate(as_completed(futures), start=1):
            run, outcome = futures[future], future.result()
            elapsed = time.perf_counter() - start
            if outcome.status == "done":
                console.print(f"[{i}/{len(runs)}] {run.name}: finished earlier, skipped")
            elif outcome.status == "ran":
                console.print(f"[{i}/{len(runs)}] {run.name}: done in {outcome.seconds:.0f} s "
                              f"(study {elapsed / 60:.1f} min)")
            else:
                console.print(f"[{i}/{len(runs)}] [red]{run.name}: FAILED[/red], log {outcome.log}")
                failed.append(outcome)
    return failed
