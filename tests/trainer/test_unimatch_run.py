"""`python fastforec/train.py --set method.base=unimatch --set method.aux=forec` trains and
evaluates on 1 and 2 CPU ranks, and a run resumed from its mid-way checkpoint ends bit-exactly
where the uninterrupted run ends (weights, logged losses)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_distributed import torchrun
from trainer_support import (
    CPU_ONLY,
    assert_same_end,
    resume_midway,
    run_train,
    tiny_config,
    train_records,
    write_config,
)

STEPS = 4
MIDWAY = 2
UNIMATCH_FOREC = ["--set", "method.base=unimatch", "--set", "method.aux=forec"]
LOSS_KEYS = ("loss", "loss_s", "loss_u_s1", "loss_u_s2", "loss_u_fp", "loss_rec")


@pytest.mark.parametrize("ranks", [1, 2])
def test_unimatch_forec_trains_evaluates_and_resumes_exactly(shards: Path, tmp_path: Path, ranks: int) -> None:
    # conf_thresh 0: an untrained model is never confident; every loss term should be active
    cfg = write_config(tmp_path / "cfg.json", tiny_config(
        shards, method={"conf_thresh": 0.0, "rec_conf_thresh": 0.0},
        train={"max_steps": STEPS, "checkpoint_every": MIDWAY, "keep_checkpoints": 3}))
    launcher = torchrun() if ranks == 2 else None
    full = tmp_path / "full"
    proc = run_train(["--config", str(cfg), "--run-dir", str(full), *UNIMATCH_FOREC], cwd=tmp_path, launcher=launcher,
                     env=CPU_ONLY)  # bit-exact on the CPU; 2 ranks even where there is one GPU
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((full / "results.json").read_text())
    assert results["method"] == "unimatch+forec" and results["step"] == STEPS
    assert 0.0 <= results["miou_last"] <= 1.0
    saved = json.loads((full / "config.json").read_text())["method"]
    assert (saved["base"], saved["aux"]) == ("unimatch", "forec")
    records = train_records(full)
    assert sorted(records) == list(range(1, STEPS + 1))
    for r in records.values():
        assert all(math.isfinite(r[k]) for k in LOSS_KEYS), r
        assert r["loss_u_s1"] > 0 and r["loss_u_fp"] > 0 and r["loss_rec"] > 0

    # a second run that starts from the first one's mid-way checkpoint
    part = tmp_path / "part"
    resume_midway(cfg, full, part, midway=MIDWAY, args=UNIMATCH_FOREC, cwd=tmp_path, launcher=launcher, env=CPU_ONLY)
    assert torch.load(part / "checkpoints" / f"step_{STEPS:08d}.pt", weights_only=True)["teacher"] is None
    assert_same_end(full, part, steps=STEPS, midway=MIDWAY, networks=("student",), loss_keys=LOSS_KEYS)


def test_resume_with_another_base_is_refused(shards: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": 2, "checkpoint_every": 2}))
    run_dir = tmp_path / "run"
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir), "--set", "train.max_steps=1",
                      "--set", "method.base=fixmatch"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir), "--resume", "--set", "train.max_steps=1"],
                     cwd=tmp_path)
    assert proc.returncode == 2
    assert "method.base=fixmatch" in proc.stderr and "Traceback" not in proc.stderr
