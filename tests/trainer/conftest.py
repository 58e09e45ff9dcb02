"""Shared fixture of the trainer tests: a tiny shard dataset made by dataprep."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.shard_sets import make_shards

    return make_shards(tmp_path_factory.mktemp("shards"), layout="voc", num_train=24, num_labeled=8, num_val=4,
                       size=(64, 80), seed=0)


@pytest.fixture(scope="session")
def city_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cityscapes-layout shards of 64 x 128 images (sliding-window evaluation)."""
    from tests.shard_sets import make_shards

    return make_shards(tmp_path_factory.mktemp("city"), layout="cityscapes", num_train=4, num_labeled=2, num_val=2,
                       size=(64, 128), seed=1)



@pytest.fixture(scope="session")
def uninterrupted_run(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, run directory) of a 6-step run checkpointing every 3 steps, on one rank: what a
    killed, stopped or resumed run of the same config must equal."""
    from trainer_support import CPU_ONLY, RESUME_CHECKPOINT_EVERY, RESUME_STEPS, run_train, tiny_config, write_config

    root = tmp_path_factory.mktemp("uninterrupted")
    cfg = write_config(root / "cfg.json", tiny_config(shards, train={"max_steps": RESUME_STEPS,
                                                                     "checkpoint_every": RESUME_CHECKPOINT_EVERY}))
    proc = run_train(["--config", str(cfg), "--run-dir", str(root / "full")], cwd=root, env=CPU_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, root / "full"
