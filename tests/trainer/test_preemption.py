"""Preemption: a stop signal (SIGTERM from a scheduler, SLURM's SIGUSR1 warning, Ctrl-C's SIGINT)
ends a training run after the current step with a checkpoint of that step, and --resume from it
equals the uninterrupted run to the last bit (1 rank; 2 ranks under the `deepspeed` launcher, which
passes the signal on to its ranks once more). Every run is on the CPU (CUDA hidden): bit-exact
resume is the CPU's promise, and 2 CPU ranks also work on a one-GPU machine. A second signal
exits at once; a signal during start-up exits with one line and no traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from test_distributed import deepspeed_launcher
from trainer_support import (
    CPU_ONLY,
    RESUME_STEPS,
    TRAIN_SCRIPT,
    assert_same_end,
    clean_env,
    read_jsonl,
    run_train,
    tiny_config,
    write_config,
)

from fastforec.preemption import DUPLICATE_WINDOW_S
from fastforec.run_lock import LOCK_NAME

# The signal comes once the metrics of this step are written: its all-reduce is past, so the run
# stops after a later step, which is not one of the periodic checkpoints (3, 6).
SIGNAL_AFTER = 3
LOSS_KEYS = ("loss", "loss_s", "loss_u", "loss_rec")
STOPPED = re.compile(r"stopped by (\S+|a signal to another rank) at step (\d+) \(checkpoint '([^']+)'\); "
                     r"resume with --resume")


def _start(cfg: Path, run_dir: Path, cwd: Path, launcher: list[str] | None = None,
           extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    err = cwd / f"{run_dir.name}.stderr"
    cmd = (launcher or [sys.executable]) + [str(TRAIN_SCRIPT), "--config", str(cfg), "--run-dir", str(run_dir), *extra]
    # a session of its own: the signal goes to the whole job, as SLURM and a terminal send it
    child = subprocess.Popen(cmd, cwd=cwd, env=clean_env(**CPU_ONLY), stdout=subprocess.DEVNULL, stderr=open(err, "w"),
                             start_new_session=True)
    return child, err


def _signal_job(child: subprocess.Popen, sig: int) -> int:
    """Send ``sig`` to every process of the job, as SLURM and a terminal's Ctrl-C do, and wait until
    all have ended; the exit code of ``child`` (with a launcher, the launcher's)."""
    procs = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    os.killpg(child.pid, sig)
    code = child.wait(timeout=300)
    _, alive = psutil.wait_procs(procs, timeout=300)
    assert not alive, alive
    return code


def _wait_for_step(run_dir: Path, step: int, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    metrics = run_dir / "metrics.jsonl"
    while child.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and any(f'"step": {step},' in line for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.02)
    raise AssertionError(f"the run never logged step {step} (exit code {child.poll()})")


def _stopped_at(stderr: str, run_dir: Path) -> int:
    match = STOPPED.search(stderr)
    assert match, stderr[-3000:]
    step = int(match[2])
    assert SIGNAL_AFTER < step < RESUME_STEPS, f"stopped at step {step}: the test wants a stop mid-run"
    assert Path(match[3]) == run_dir / "checkpoints" / f"step_{step:08d}.pt"
    assert (run_dir / "checkpoints" / f"step_{step:08d}.pt").is_file()
    return step


def test_sigterm_saves_the_step_and_resume_equals_the_uninterrupted_run(uninterrupted_run: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    cfg, full = uninterrupted_run
    part = tmp_path / "part"
    # the job script a scheduler may requeue: the same command, --resume auto, both times
    child, err = _start(cfg, part, tmp_path, extra=("--resume", "auto"))
    _wait_for_step(part, SIGNAL_AFTER, child)
    assert _signal_job(child, signal.SIGTERM) == 128 + signal.SIGTERM
    stderr = err.read_text()
    assert f"--resume auto: no checkpoint in '{part / 'checkpoints'}', so this is a new run" in stderr
    step = _stopped_at(stderr, part)
    assert "SIGTERM received: stopping after the current step" in stderr and "Traceback" not in stderr
    logged = [r["step"] for r in read_jsonl(part / "metrics.jsonl") if r["kind"] == "train"]
    assert logged == list(range(1, step + 1))

    proc = run_train(["--config", str(cfg), "--run-dir", str(part), "--resume", "auto"], cwd=tmp_path, env=CPU_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {part / 'checkpoints' / f'step_{step:08d}.pt'} at step {step}" in proc.stderr
    assert_same_end(full, part, steps=RESUME_STEPS, midway=0, networks=("student", "teacher"), loss_keys=LOSS_KEYS)


def test_two_ranks_stop_after_the_same_step_and_resume_exactly(shards: Path, tmp_path: Path) -> None:
    # SIGTERM to the job: the `deepspeed` launcher's runner dies at once, its per-node launcher passes
    # the signal on to each rank once more, milliseconds after the first (a duplicate, not a
    # second "exit now"); both ranks must stop after the same step.
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": RESUME_STEPS,
                                                                         "checkpoint_every": 3}))
    launcher = deepspeed_launcher()
    full = tmp_path / "full"
    proc = run_train(["--config", str(cfg), "--run-dir", str(full)], cwd=tmp_path, launcher=launcher, env=CPU_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]

    part = tmp_path / "part"
    child, err = _start(cfg, part, tmp_path, launcher=launcher)
    _wait_for_step(part, SIGNAL_AFTER, child)
    _signal_job(child, signal.SIGTERM)
    step = _stopped_at(err.read_text(), part)
    assert sorted(p.name for p in (part / "checkpoints").glob(f"step_{step:08d}*")) == [
        f"step_{step:08d}.pt", f"step_{step:08d}.rank0.pt", f"step_{step:08d}.rank1.pt"]

    proc = run_train(["--config", str(cfg), "--run-dir", str(part), "--resume"], cwd=tmp_path, launcher=launcher,
                     env=CPU_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_end(full, part, steps=RESUME_STEPS, midway=0, networks=("student", "teacher"), loss_keys=LOSS_KEYS)


def test_a_second_signal_exits_at_once(shards: Path, tmp_path: Path) -> None:
    # steps of several seconds (a wider crop and batch), so that the step is still running when the
    # second Ctrl-C comes, past the window in which a repeat counts as the same signal
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, data={"crop_size": 192, "batch_size": 8},
                                                          train={"max_steps": 50, "checkpoint_every": 100}))
    run_dir = tmp_path / "run"
    child, err = _start(cfg, run_dir, tmp_path)
    _wait_for_step(run_dir, 1, child)
    child.send_signal(signal.SIGINT)
    time.sleep(DUPLICATE_WINDOW_S + 0.2)
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=120) == 128 + signal.SIGINT
    stderr = err.read_text()
    assert "SIGINT again: exiting now without saving" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert not list(run_dir.glob("checkpoints/step_*.pt"))


def test_a_signal_during_start_up_exits_with_one_line(shards: Path, tmp_path: Path) -> None:
    sig = signal.SIGUSR1  # SLURM's --signal=USR1@<seconds> may come before the first step
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards))
    run_dir = tmp_path / "run"
    child, err = _start(cfg, run_dir, tmp_path)
    # the run takes its directory's lock before it builds the model, DeepSpeed and the data pipelines
    deadline = time.monotonic() + 120
    while not (run_dir / LOCK_NAME).exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _signal_job(child, sig) == 128 + sig
    stderr = err.read_text()
    assert f"stopped by {sig.name} during start-up; nothing was trained, so nothing was saved" in stderr
    assert "Traceback" not in stderr
    assert not run_dir.exists()  # the directory it made for its lock is gone: nothing half-written
