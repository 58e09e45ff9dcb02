"""Helpers of the trainer tests: tiny run configs and running fastforec/train.py as a user would.

(A module of its own rather than conftest.py: several test folders have a conftest, and
`from conftest import ...` would pick whichever was imported first.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from tests import child_process

REPO = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO / "fastforec" / "train.py"
# the uninterrupted run of the resume tests (conftest.uninterrupted_run)
RESUME_STEPS, RESUME_CHECKPOINT_EVERY = 6, 3
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# The environment of a child that must train on the CPU on any machine: the bit-exact resume
# promise is the CPU's (README), and two ranks on a machine with one GPU would share it.
CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}


def tiny_config(data_root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A run config small enough for a few CPU steps per second."""
    cfg: dict[str, Any] = {
        "data": {"root": str(data_root), "crop_size": 48, "batch_size": 2, "num_threads": 1, "device": "cpu"},
        "model": {"backbone": "resnet18", "output_stride": 16},
        "method": {"base": "mean_teacher", "aux": "forec", "conf_thresh": 0.5},
        "optim": {"lr": 0.01, "head_lr_mult": 10.0, "weight_decay": 1e-4},
        "train": {"name": "tiny", "epochs": 1, "max_steps": 4, "log_every": 1, "checkpoint_every": 2,
                  "keep_checkpoints": 2, "seed": 0},
        "deepspeed": {},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg, indent=2))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no launcher variables inherited from this process
    (an in-process world of one sets them, and its port is taken)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def run_train(args: list[str], *, cwd: Path, timeout: float | None = None, launcher: list[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """train.py in a child process, within the test's time limit (tests/child_process.py) and
    ``timeout`` if given; ``env``: variables added to its environment (e.g. CPU_ONLY)."""
    cmd = (launcher or [sys.executable]) + [str(TRAIN_SCRIPT)] + args
    return child_process.run(cmd, cwd=cwd, env=clean_env(**(env or {})), capture_output=True, text=True,
                             timeout=timeout)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def threshold_between(conf: torch.Tensor, q: float) -> float:
    """A threshold near the q-quantile of ``conf`` that lies halfway between two distinct values:
    a threshold equal to a confidence that many pixels share (padding regions give runs of equal
    values) would let one-ulp differences between the kernel's softmax and torch's flip them."""
    values = conf.flatten().unique()  # sorted
    i = min(int(q * (values.numel() - 1)), values.numel() - 2)
    return float((values[i] + values[i + 1]) / 2)


def train_records(run_dir: Path) -> dict[int, dict[str, Any]]:
    """metrics.jsonl's training records by step."""
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def resume_midway(cfg: Path, full: Path, part: Path, *, midway: int, args: list[str], cwd: Path,
                  launcher: list[str] | None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cfg`` again in ``part``, resumed from ``full``'s checkpoint at ``midway`` (all rank files)."""
    (part / "checkpoints").mkdir(parents=True)
    for f in (full / "checkpoints").glob(f"step_{midway:08d}*.pt"):
        shutil.copy(f, part / "checkpoints" / f.name)
    proc = run_train(["--config", str(cfg), "--run-dir", str(part), "--resume", *args], cwd=cwd, launcher=launcher,
                     env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def assert_same_end(full: Path, part: Path, *, steps: int, midway: int, networks: tuple[str, ...],
                    loss_keys: tuple[str, ...]) -> None:
    """The resumed run ends with the uninterrupted run's weights, bit for bit, and logs its losses."""
    a = torch.load(full / "checkpoints" / f"step_{steps:08d}.pt", weights_only=True)
    b = torch.load(part / "checkpoints" / f"step_{steps:08d}.pt", weights_only=True)
    for net in networks:
        for name, t in a[net].items():
            assert torch.equal(t, b[net][name]), f"{net}.{name} differs after resume"
    records, resumed = train_records(full), train_records(part)
    assert sorted(resumed) == list(range(midway + 1, steps + 1))
    for step, r in resumed.items():
        assert [r[k] for k in loss_keys] == [records[step][k] for k in loss_keys], step
