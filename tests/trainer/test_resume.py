"""Exact resume: a run killed after a checkpoint and resumed equals the uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

from trainer_support import TRAIN_SCRIPT, clean_env, run_train, tiny_config, write_config

STEPS = 6
KILL_AT = 3


def _final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / f"step_{STEPS:08d}.pt", weights_only=True)


def test_killed_and_resumed_run_equals_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": STEPS, "checkpoint_every": KILL_AT}))
    full = tmp_path / "full"
    proc = run_train(["--config", str(cfg), "--run-dir", str(full)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    part = tmp_path / "part"
    child = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), "--config", str(cfg), "--run-dir", str(part)],
                             cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = part / "checkpoints" / f"step_{KILL_AT:08d}.pt"
    deadline = time.monotonic() + 240
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.kill()  # SIGKILL: no clean shutdown, as after a node failure
    child.wait()
    assert marker.exists(), "the interrupted run never reached its checkpoint"

    proc = run_train(["--config", str(cfg), "--run-dir", str(part), "--resume"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = _final_state(full), _final_state(part)
    assert a["state"]["step"] == b["state"]["step"] == STEPS
    for key in ("student", "teacher"):
        for name, t in a[key].items():
            # bit-exact: CPU kernels are deterministic and the data position and RNG are restored
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"
