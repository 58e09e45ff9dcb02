"""Checkpoint I/O: round trip, safe loading, clear errors on damaged files, keep-last-k."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import pytest
import torch

from fastforec.checkpoint_files import (
    CheckpointError,
    check_same_settings,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_writes,
    resolve_checkpoint,
    save_checkpoint,
)


def _state(step: int) -> dict:
    gen = torch.Generator().manual_seed(step)
    return {
        "step": step,
        "model": collections.OrderedDict(w=torch.randn(4, 3, generator=gen), n=torch.tensor(step)),
        "optimizer": {"state": {0: {"momentum_buffer": torch.randn(4, 3, generator=gen)}},
                      "param_groups": [{"lr": 0.01, "params": [0]}]},
        "config": {"method": {"base": "mean_teacher", "aux": "forec", "fg_classes": [1, 2]},
                   "train": {"max_steps": None}},
        "rng": {"torch": torch.get_rng_state()},
    }


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_keeps_tensors_and_plain_values(tmp_path: Path) -> None:
    state = _state(3)
    path = save_checkpoint(state, tmp_path / "ck" / checkpoint_name(3))
    assert path.name == "step_00000003.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_00000003.pt"]  # no temp left
    _assert_same(state, load_checkpoint(path))


def test_truncated_file_is_a_clear_error_and_the_previous_one_still_loads(tmp_path: Path) -> None:
    first = save_checkpoint(_state(1), tmp_path / checkpoint_name(1))
    second = save_checkpoint(_state(2), tmp_path / checkpoint_name(2))
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(second)
    msg = str(exc.value)
    assert str(second) in msg and "corrupt or truncated" in msg and "earlier checkpoint" in msg
    _assert_same(_state(1), load_checkpoint(first))


@pytest.mark.parametrize("damage", ["garbage", "flipped", "empty"])
def test_corrupted_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(_state(4), tmp_path / checkpoint_name(4))
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a checkpoint at all" * 10)
    elif damage == "flipped":
        # Overwrite the zip's central directory (the archive's table of contents, at the end).
        data[-200:] = bytes(200)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_a_failed_save_leaves_the_previous_file_at_that_path_intact(tmp_path: Path) -> None:
    path = save_checkpoint(_state(5), tmp_path / "latest.pt")
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):  # the digest refuses it first
        save_checkpoint({"model": _state(6)["model"], "bad": lambda: 0}, path)  # cannot be pickled
    _assert_same(_state(5), load_checkpoint(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


class _Custom:
    def __init__(self) -> None:
        self.value = 1


def test_loading_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": _Custom()}, path)
    with pytest.raises(CheckpointError, match="evil.pt") as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    # said for what it is, and never the advice torch gives (to unpickle it after all)
    assert "not a fastforec checkpoint or weight file" in msg and "never unpickles" in msg
    assert "weights_only" not in msg and "corrupt" not in msg


def test_a_flipped_byte_inside_a_tensor_is_caught_by_the_checksum(tmp_path: Path) -> None:
    first = save_checkpoint(_state(1), tmp_path / checkpoint_name(1))
    state = _state(2)
    path = save_checkpoint(state, tmp_path / checkpoint_name(2))
    data = bytearray(path.read_bytes())
    raw = state["model"]["w"].numpy().tobytes()
    at = bytes(data).find(raw)
    assert at > 0, "the tensor's bytes are stored as they are"
    data[at + 5] ^= 0x01  # one bit of one weight: torch.load alone accepts this file
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], state["model"]["w"])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert f"'{path}' is corrupt" in msg and "checksum" in msg and f"earlier checkpoint '{first}'" in msg


def test_a_file_without_checksum_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="plain.pt' has no checksum"):
        load_checkpoint(path)


def test_temporaries_of_a_killed_write_are_removed_and_nothing_else(tmp_path: Path) -> None:
    keep = save_checkpoint(_state(1), tmp_path / checkpoint_name(1))
    stale = [tmp_path / ".step_00000002.pt.tmp-4242", tmp_path / ".step_00000002.rank1.pt.tmp-17"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    (tmp_path / ".config.json.tmp-5").write_text("{")
    assert sorted(remove_partial_writes(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".config.json.tmp-5", keep.name]


def test_changed_settings_name_the_key_and_both_values(tmp_path: Path) -> None:
    saved = {"model": {"decoder_channels": 64, "backbone": "resnet18"}, "data": {"batch_size": 2}}
    now = {"model": {"decoder_channels": 32, "backbone": "resnet18"}, "data": {"batch_size": 2}}
    check_same_settings(saved, saved, ("model.decoder_channels", "data.batch_size"), path="a.pt")
    with pytest.raises(CheckpointError) as exc:
        check_same_settings(saved, now, ("model.backbone", "model.decoder_channels"), path="a.pt")
    assert "was trained with model.decoder_channels=64, the config says 32" in str(exc.value)


def test_non_dict_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="is not a fastforec checkpoint .top level is list"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="nothing.pt' does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_listing_is_by_step_number_and_ignores_other_files(tmp_path: Path) -> None:
    for step in (1000, 20, 3):
        save_checkpoint({"step": step}, tmp_path / checkpoint_name(step))
    (tmp_path / "step_00000005.pt.tmp-123").write_bytes(b"")  # a crashed write, other pattern
    (tmp_path / ".step_00000007.pt.tmp-9").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    # Names written by an older zero padding still sort numerically.
    save_checkpoint({"step": 100}, tmp_path / "step_100.pt")
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000003.pt", "step_00000020.pt", "step_100.pt", "step_00001000.pt"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00001000.pt"
    assert latest_checkpoint(tmp_path / "empty") is None


def test_prune_keeps_the_newest_k(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        save_checkpoint({"step": step}, tmp_path / checkpoint_name(step))
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["step_00000010.pt", "step_00000020.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000030.pt", "step_00000040.pt"]
    assert prune_checkpoints(tmp_path, keep=2) == []
    assert load_checkpoint(tmp_path / checkpoint_name(40)) == {"step": 40}


def test_resolve_accepts_a_file_a_run_directory_or_a_checkpoint_directory(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"
    for step in (1, 2):
        save_checkpoint({"step": step}, run / "checkpoints" / checkpoint_name(step))
    assert resolve_checkpoint(run) == run / "checkpoints" / checkpoint_name(2)
    assert resolve_checkpoint(run / "checkpoints") == run / "checkpoints" / checkpoint_name(2)
    assert resolve_checkpoint(run / "checkpoints" / checkpoint_name(1)) == run / "checkpoints" / checkpoint_name(1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint \(step_\*\.pt\) in .*empty"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="missing.pt' does not exist"):
        resolve_checkpoint(tmp_path / "missing.pt")
