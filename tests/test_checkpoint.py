"""What a training checkpoint must be to be resumed or read (fastforec.checkpoint), on files
written by fastforec.checkpoint_files: the format is checked and a refusal says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastforec.checkpoint import CHECKPOINT_FORMAT, load_trained_weights, pick_checkpoint
from fastforec.checkpoint_files import CheckpointError, checkpoint_name, rank_file, save_checkpoint
from fastforec.config import Config
from fastforec.distributed import DistInfo

ONE_RANK = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _write(directory: Path, step: int, **shared) -> Path:
    path = directory / checkpoint_name(step)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": Config().to_dict(), "world_size": 1,
                     "dataset": {"num_classes": 2}, "student": {"w": torch.ones(2)}, "teacher": None, **shared}, path)
    save_checkpoint({"rng": {}}, rank_file(path, 0))
    return path


def test_resume_picks_the_newest_and_checks_its_settings(tmp_path: Path):
    _write(tmp_path, 2)
    newest = _write(tmp_path, 4)
    picked = pick_checkpoint("latest", directory=tmp_path, dist=ONE_RANK, config=Config())
    assert picked.path == newest and picked.own == {"rng": {}}
    other = Config()
    other.train.seed = 7
    with pytest.raises(CheckpointError, match=r"train.seed=0, the config says 7; .*--set train.seed=0"):
        pick_checkpoint("latest", directory=tmp_path, dist=ONE_RANK, config=other)


def test_an_older_format_is_read_for_inference_but_not_resumed(tmp_path: Path):
    old = _write(tmp_path, 3, format="fastforec-checkpoint-v1")
    with pytest.raises(CheckpointError, match="older fastforec .*not resumed: start a new run"):
        pick_checkpoint(str(old), directory=tmp_path, dist=ONE_RANK, config=Config())
    weights = load_trained_weights(tmp_path)
    assert weights.path == old and torch.equal(weights.student["w"], torch.ones(2)) and weights.teacher is None


@pytest.mark.parametrize("shared, message", [
    ({"format": "something-else"}, "not a fastforec training checkpoint \\(format 'something-else'"),
    ({"student": None, "dataset": None}, "not a complete fastforec training checkpoint \\(no dataset, student\\)"),
    ({"world_size": 2}, None),  # readable for inference; only a resume needs the same ranks
])
def test_inference_checks_what_it_reads(tmp_path: Path, shared: dict, message: str | None):
    path = _write(tmp_path, 1, **shared)
    if message is None:
        assert load_trained_weights(path).dataset == {"num_classes": 2}
        with pytest.raises(CheckpointError, match="written by 2 ranks; resume with the same number"):
            pick_checkpoint(str(path), directory=tmp_path, dist=ONE_RANK, config=Config())
    else:
        with pytest.raises(CheckpointError, match=message):
            load_trained_weights(path)
