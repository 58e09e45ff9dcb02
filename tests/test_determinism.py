"""train.deterministic: the process-wide switches it sets, and what it leaves alone when off."""

from __future__ import annotations

import os

import pytest
import torch

from fastforec.config import ConfigError, config_from_dict
from fastforec.determinism import CUBLAS_WORKSPACE, configure_determinism, cudnn_autotuner_off


@pytest.fixture
def restore_switches(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def test_deterministic_sets_every_switch(restore_switches) -> None:
    configure_determinism(deterministic=True, cudnn_benchmark=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark  # benchmark overridden
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE


def test_off_sets_cudnn_benchmark_only(restore_switches) -> None:
    torch.use_deterministic_algorithms(False)
    configure_determinism(deterministic=False, cudnn_benchmark=False)
    assert not torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    configure_determinism(deterministic=False, cudnn_benchmark=True)
    assert torch.backends.cudnn.benchmark


def test_the_config_key_is_a_bool() -> None:
    assert config_from_dict({"train": {"deterministic": True}}).train.deterministic is True
    assert config_from_dict({}).train.deterministic is False
    with pytest.raises(ConfigError, match="train.deterministic"):
        config_from_dict({"train": {"deterministic": "yes"}})


def test_the_autotuner_is_off_inside_and_restored_after(restore_switches) -> None:
    torch.backends.cudnn.benchmark = True
    with cudnn_autotuner_off():
        assert not torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError), cudnn_autotuner_off():
        raise RuntimeError("an evaluation that fails")
    assert torch.backends.cudnn.benchmark
