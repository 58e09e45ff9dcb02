"""The warm-up ends by resetting the teacher to the student (U2PL), and training can score the
teacher, the student or both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainer_support import read_jsonl, tiny_config, write_config

from fastforec.config import ConfigError, load_config
from fastforec.distributed import init_distributed
from fastforec.methods import check_config
from fastforec.teacher import ema_alpha
from fastforec.trainer import Trainer


@pytest.fixture(scope="module")
def world():
    return init_distributed()


def _segmentation_state(module: torch.nn.Module, keys) -> dict[str, torch.Tensor]:
    state = module.state_dict()
    return {k: state[k].detach().clone() for k in keys}


def _warmup_trainer(shards: Path, tmp_path: Path, world, *, reset: bool | None, extra_steps: int) -> Trainer:
    # 16 unlabeled images at batch 2: a warm-up epoch is 8 steps
    cfg = tiny_config(shards, method={"base": "mean_teacher", "aux": "none", "conf_thresh": 0.5, "warmup_epochs": 1,
                                      "warmup_reset_teacher": reset, "ema_decay": 0.9},
                      train={"max_steps": 8 + extra_steps, "checkpoint_every": 1000},
                      eval={"every": 1000})
    run_dir = tmp_path / f"run_{reset}_{extra_steps}"
    run_dir.mkdir()
    trainer = Trainer(load_config(write_config(tmp_path / f"cfg_{reset}_{extra_steps}.json", cfg)),
                      run_dir=run_dir, dist=world)
    assert trainer.warmup_batches == 8
    return trainer


@pytest.mark.parametrize("reset", [None, False])
def test_teacher_is_the_student_when_the_warmup_ends(shards: Path, tmp_path: Path, world, reset) -> None:
    trainer = _warmup_trainer(shards, tmp_path, world, reset=reset, extra_steps=0)
    trainer.fit()
    keys = list(trainer.teacher.module.state_dict())
    teacher = _segmentation_state(trainer.teacher.module, keys)
    student = _segmentation_state(trainer.student, keys)
    same = all(torch.equal(teacher[k], student[k]) for k in keys)
    # default (None) resets whenever there is a warm-up; False keeps the EMA of the warm-up weights
    assert same == (reset is None)


def test_ema_ramp_restarts_after_the_reset(shards: Path, tmp_path: Path, world) -> None:
    trainer = _warmup_trainer(shards, tmp_path, world, reset=True, extra_steps=3)
    seen = []
    update = trainer.teacher.update

    def spy(student, step, fp32_param=None):
        seen.append(step)
        return update(student, step, fp32_param=fp32_param)
    trainer.teacher.update = spy
    trainer.fit()
    # 8 warm-up steps count 0..7; after the reset the ramp starts again at 0 (alpha 0: a copy)
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2]
    assert ema_alpha(0, 0.9) == 0.0


def test_both_models_are_scored(shards: Path, tmp_path: Path, world) -> None:
    cfg = tiny_config(shards, method={"base": "mean_teacher", "aux": "none", "conf_thresh": 0.5},
                      train={"max_steps": 2}, eval={"model": "both"})
    run_dir = tmp_path / "both"
    run_dir.mkdir()
    trainer = Trainer(load_config(write_config(tmp_path / "both.json", cfg)), run_dir=run_dir, dist=world)
    results = trainer.fit()
    assert results["scored"] == "student" and set(results["models"]) == {"student", "teacher"}
    assert results["miou_last"] == results["models"]["student"]["miou_last"]
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["teacher_miou"] == results["models"]["teacher"]["miou_last"]
    assert evals[-1]["student_miou"] == evals[-1]["miou"] == results["miou_last"]
    # the teacher is a different network from the student after two EMA steps, and scored as one
    keys = list(trainer.teacher.module.state_dict())
    assert any(not torch.equal(a, b) for a, b in zip(_segmentation_state(trainer.teacher.module, keys).values(),
                                                      _segmentation_state(trainer.student, keys).values()))


def test_teacher_only_needs_a_teacher(shards: Path, tmp_path: Path) -> None:
    cfg = tiny_config(shards, method={"base": "supervised", "aux": "none"}, eval={"model": "teacher"})
    with pytest.raises(ConfigError, match="eval.model: method 'supervised' trains no teacher"):
        check_config(load_config(write_config(tmp_path / "sup_teacher.json", cfg)))
    moved = tiny_config(shards, data={"eval_mode": "whole"})
    with pytest.raises(ConfigError, match="data.eval_mode: this setting moved; write it as eval.mode"):
        load_config(write_config(tmp_path / "moved.json", moved))
    removed = tiny_config(shards, data={"shuffle_buffer": 64})
    with pytest.raises(ConfigError, match="data.shuffle_buffer: this setting was removed: .*no shuffle buffer"):
        load_config(write_config(tmp_path / "removed.json", removed))
    # train.deterministic, once removed, is a setting again (fastforec/determinism.py)
    assert load_config(write_config(tmp_path / "plain.json", tiny_config(shards)),
                       ["train.deterministic=true"]).train.deterministic
