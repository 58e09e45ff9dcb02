"""The deepspeed block: keys DeepSpeed does not read are refused, with the closest one it reads;
the list of known keys is the installed DeepSpeed's own (it parses the block)."""

from __future__ import annotations

import pytest
import torch

from fastforec.config import ConfigError, config_from_dict, load_config, shipped_configs
from fastforec.ds_config import deepspeed_config
from tests.config_files import resolved, shipped

CPU = torch.device("cpu")


def _check(block: dict) -> dict:
    return deepspeed_config(config_from_dict({"deepspeed": block, "data": {"batch_size": 2}}), CPU)


@pytest.mark.parametrize("block, message", [
    ({"zero_optimisation": {"stage": 2}},
     "deepspeed.zero_optimisation: DeepSpeed does not know this key (it would be ignored); "
     "did you mean deepspeed.zero_optimization?"),
    ({"zero_optimization": {"stagee": 2}},
     "deepspeed.zero_optimization.stagee: Extra inputs are not permitted (DeepSpeed's DeepSpeedZeroConfig); "
     "did you mean deepspeed.zero_optimization.stage?"),
    ({"flops_profiler": {"enabled": False, "profile_stepp": 3}},
     "deepspeed.flops_profiler.profile_stepp: DeepSpeed does not know this key (it would be ignored); "
     "did you mean deepspeed.flops_profiler.profile_step?"),
    ({"torch_autocast": {"enabled": True, "dtyp": "bfloat16"}},
     "did you mean deepspeed.torch_autocast.dtype?"),
    ({"tensorboard": {"enabld": True}}, "deepspeed.tensorboard.enabld: Extra inputs are not permitted"),
    ({"gradient_accumulation_steps": 0}, "deepspeed.gradient_accumulation_steps: must be an integer >= 1"),
    ({"gradient_accumulation_steps": 1.5}, "deepspeed.gradient_accumulation_steps: must be an integer >= 1"),
])
def test_unknown_keys_are_refused_with_the_closest_known_one(block: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _check(block)
    assert message in str(exc.value)


def test_known_sections_pass_and_the_trainer_fills_in_its_keys() -> None:
    ds = _check({"zero_optimization": {"stage": 1}, "torch_autocast": {"enabled": True, "dtype": "bfloat16"},
                 "gradient_accumulation_steps": 2, "timers": {"throughput": {"enabled": True}},
                 "tensorboard": {"enabled": False}, "flops_profiler": {"enabled": False}})
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["zero_allow_untested_optimizer"] is True
    # DeepSpeed would clip the gradient norm at 1.0; the methods reproduced here do not clip
    assert ds["gradient_clipping"] == 0.0
    assert _check({"gradient_clipping": 5.0})["gradient_clipping"] == 5.0  # a written value stays


def test_every_shipped_config_has_a_valid_deepspeed_block() -> None:
    # what each file (with what it extends, read here without fastforec.config) writes, plus the
    # keys the trainer owns: the micro-batch is data.batch_size, the rest DeepSpeed's defaults
    # unless written; the derived global batch is never passed on
    assert [p.stem for p in shipped()] == shipped_configs()
    for path in shipped():
        written = resolved(path)
        block = written.get("deepspeed", {})
        want = {"train_micro_batch_size_per_gpu": written["data"]["batch_size"], "gradient_accumulation_steps": 1,
                "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9, "gradient_clipping": 0.0,
                **{k: v for k, v in block.items() if k != "train_batch_size"}}
        assert deepspeed_config(load_config(path.stem), CPU) == want, path.name


def test_one_rank_runs_zero_stage_0_and_two_ranks_the_configs_stage() -> None:
    for stage in (0, 1, 2):
        cfg = config_from_dict({"deepspeed": {"zero_optimization": {"stage": stage}}, "data": {"batch_size": 2}})
        assert deepspeed_config(cfg, CPU, world_size=1)["zero_optimization"]["stage"] == 0
        assert deepspeed_config(cfg, CPU, world_size=2)["zero_optimization"]["stage"] == stage
        assert deepspeed_config(cfg, CPU)["zero_optimization"]["stage"] == stage  # world unknown: as written
        assert cfg.deepspeed["zero_optimization"]["stage"] == stage  # the config itself is left as written
