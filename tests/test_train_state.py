"""The stateful parts of a run (fastforec.train_state): each round-trips through its state dict,
and a state that does not describe this run is refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastforec.config import ConfigError
from fastforec.train_state import EngineCounters, OptimizerState, RngState, Score, TrainState


def test_train_state_round_trips_through_json():
    state = TrainState(steps_per_epoch=7, step=5, batches=11, nonfinite_total=2, nonfinite_consecutive=1,
                       scores={"teacher": Score(best_miou=0.5, best_epoch=1, miou_last=0.4)})
    assert state.epoch == 1
    restored = TrainState(steps_per_epoch=7)
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert restored == state and isinstance(restored.scores["teacher"], Score)


def test_train_state_refuses_a_position_over_other_data():
    saved = TrainState(steps_per_epoch=7, batches=9).state_dict()
    with pytest.raises(ValueError, match="7 micro-batches per epoch, this run's has 8: the training data"):
        TrainState(steps_per_epoch=8).load_state_dict(saved)


def _sgd(seed: int) -> torch.optim.SGD:
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    (w ** 2).sum().backward()
    opt.step()
    return opt


def test_optimizer_state_round_trips_and_names_a_kind_change():
    a, b = _sgd(0), _sgd(1)
    OptimizerState(b).load_state_dict(OptimizerState(a).state_dict())
    momentum = [opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"] for opt in (a, b)]
    assert torch.equal(*momentum)
    with pytest.raises(ValueError, match="'zero', this run's is 'torch'"):
        OptimizerState(b).load_state_dict({"kind": "zero", "base": {}})
    with pytest.raises(ConfigError, match="not supported"):
        OptimizerState(object())


def test_engine_counters_and_rng_round_trip():
    class Engine:
        global_steps, global_samples, micro_steps = 3, 48, 6

    saved = EngineCounters(Engine()).state_dict()
    fresh = type("Fresh", (), {})()
    EngineCounters(fresh).load_state_dict(saved)
    assert (fresh.global_steps, fresh.global_samples, fresh.micro_steps) == (3, 48, 6)

    rng = RngState(torch.device("cpu"))
    state = rng.state_dict()
    expected = torch.rand(5)
    rng.load_state_dict(state)
    assert torch.equal(torch.rand(5), expected)


def test_the_data_identity_ignores_where_the_shards_were_converted_from(tmp_path) -> None:
    """The same shards, converted from another directory (the manifest's `source` holds absolute
    paths), keep their identity; another shard checksum changes it."""
    import json
    import shutil

    from fastforec.data.manifest import Manifest
    from tests.shard_sets import make_shards

    shards = make_shards(tmp_path / "a", num_train=8, num_labeled=4, num_val=2, size=(32, 40))
    moved = Path(shutil.copytree(shards, tmp_path / "b"))
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["source"]["root"] = "/somewhere/else"
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert Manifest.load(moved).identity == Manifest.load(shards).identity
    manifest["splits"]["val"]["shards"][0]["sha256"] = "0" * 64
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert Manifest.load(moved).identity != Manifest.load(shards).identity
