"""fastforec.precision without DeepSpeed engines: BatchNorm with fp32 statistics next to 16-bit
parameters, precision-block checks and train.bf16_on_amx's rule, the loss-scaler state; plus the
launch checks (GPUs per rank, the note before DeepSpeed's first CPU extension build)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fastforec.config import ConfigError
from fastforec.distributed import LaunchError, all_ranks_true, check_local_rank
from fastforec.models import deeplabv3plus
from fastforec.precision import (
    Fp32StatsBatchNorm2d,
    check_precision,
    compute_dtype,
    cpu_precision_block,
    keep_norm_statistics_fp32,
    load_loss_scaler_state,
    loss_scaler_state,
    precision_mode,
)

CPU = torch.device("cpu")


def _bn_pair(dtype: torch.dtype, momentum: float | None) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    """(fp32 reference, the same BN converted, with its parameters cast as DeepSpeed does)."""
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6, momentum=momentum)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    half = nn.BatchNorm2d(6, momentum=momentum)
    half.load_state_dict(ref.state_dict())
    keep_norm_statistics_fp32(half)
    for p in half.parameters():
        p.data = p.data.to(dtype)
    return ref, half


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_with_16bit_parameters_keeps_fp32_statistics(dtype: torch.dtype, momentum: float | None) -> None:
    ref, half = _bn_pair(dtype, momentum)
    assert type(half) is Fp32StatsBatchNorm2d and half.weight.dtype == dtype
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # training: batch statistics, running statistics updated
        x = (3 * torch.randn(4, 6, 5, 7, generator=gen) + 2).to(dtype)
        y_ref = ref(x.float())
        y = half(x)
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), y_ref, rtol=0, atol=0.05)
    assert half.running_mean.dtype == half.running_var.dtype == torch.float32
    # statistics are computed in fp32 from the same 16-bit input, so they match the fp32 module
    torch.testing.assert_close(half.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(half.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    assert int(half.num_batches_tracked) == int(ref.num_batches_tracked) == 3

    ref.eval()
    half.eval()
    x = torch.randn(2, 6, 3, 3, generator=gen).to(dtype)
    before = half.running_mean.clone()
    torch.testing.assert_close(half(x).float(), ref(x.float()), rtol=0, atol=0.05)
    assert torch.equal(half.running_mean, before)  # eval mode leaves the statistics alone


def test_bn_gradient_reaches_the_16bit_parameters() -> None:
    ref, half = _bn_pair(torch.bfloat16, 0.1)
    x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(2))
    ref(x).pow(2).sum().backward()
    half(x.bfloat16()).float().pow(2).sum().backward()
    assert half.weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(half.weight.grad.float(), ref.weight.grad, rtol=0.05, atol=0.5)
    torch.testing.assert_close(half.bias.grad.float(), ref.bias.grad, rtol=0.05, atol=0.5)


def test_conversion_keeps_parameters_buffers_and_keys() -> None:
    model = deeplabv3plus(backbone="resnet18", num_classes=5, decoder_channels=16)
    params = {id(p) for p in model.parameters()}
    keys = list(model.state_dict())
    keep_norm_statistics_fp32(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is Fp32StatsBatchNorm2d for m in bns)
    assert {id(p) for p in model.parameters()} == params and list(model.state_dict()) == keys
    for p in model.parameters():
        p.data = p.data.bfloat16()
    out = model(torch.rand(2, 3, 32, 32).bfloat16())
    assert out["seg"].dtype == torch.bfloat16 and out["seg"].shape == (2, 5, 32, 32)


def test_conversion_refuses_16bit_statistics() -> None:
    bn = nn.BatchNorm2d(3).bfloat16()
    with pytest.raises(ValueError, match="running_mean is torch.bfloat16, expected float32"):
        keep_norm_statistics_fp32(bn)


def test_precision_blocks() -> None:
    assert precision_mode({}) == "fp32" and compute_dtype({}) == torch.float32
    assert precision_mode({"bf16": {"enabled": True}}) == "bf16"
    assert precision_mode({"bf16": {"enabled": False}, "fp16": {"enabled": True}}) == "fp16"
    assert compute_dtype({"torch_autocast": {"enabled": True, "dtype": "float16"}}) == torch.float16
    with pytest.raises(ConfigError, match="torch_autocast, fp16 are all enabled"):
        precision_mode({"fp16": {"enabled": True}, "torch_autocast": {"enabled": True}})
    with pytest.raises(ConfigError, match="deepspeed.torch_autocast.dtype: must be one of"):
        precision_mode({"torch_autocast": {"enabled": True, "dtype": "fp8"}})


def test_bf16_on_amx_chooses_the_block_by_the_cpu_and_a_resume_keeps_the_start() -> None:
    def pick(ds: dict, **kw) -> dict:
        return cpu_precision_block(ds, **{"bf16_on_amx": True, "device": CPU, **kw})

    zero = {"zero_optimization": {"stage": 1}}
    assert pick(zero, has_amx=True) == {**zero, "bf16": {"enabled": True}}
    assert pick(zero, has_amx=False) == {**zero, "bf16": {"enabled": False}}  # written out: config.json says fp32
    assert zero == {"zero_optimization": {"stage": 1}}  # the caller's block is not changed
    # a precision the user wrote wins, an explicit fp32 included; off, or on a GPU: nothing changes
    for own in ({"bf16": {"enabled": False}}, {"torch_autocast": {"enabled": True}}, {"fp16": {"enabled": True}}):
        assert pick(own, has_amx=True) is own
    assert pick({}, has_amx=True, bf16_on_amx=False) == {}
    assert pick({}, has_amx=True, device=torch.device("cuda", 0)) == {}
    # a resume continues in its checkpoint's precision whatever this CPU has (the optimizer state
    # of a bf16 run holds fp32 master weights an fp32 run has no place for, and the reverse)
    started_bf16 = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}
    assert pick(zero, has_amx=False, started_with=started_bf16) == {**zero, "bf16": {"enabled": True}}
    assert pick(zero, has_amx=True, started_with={"bf16": {"enabled": False}}) == {**zero, "bf16": {"enabled": False}}
    # a checkpoint from before the setting existed (no precision block): it trained in fp32
    assert pick({}, has_amx=True, started_with={}) == {"bf16": {"enabled": False}}
    assert precision_mode(pick({}, has_amx=True)) == "bf16" and precision_mode(pick({}, has_amx=False)) == "fp32"


def test_fp16_needs_cuda() -> None:
    with pytest.raises(ConfigError, match=r"deepspeed\.fp16: .*needs a CUDA GPU.*bf16"):
        check_precision({"fp16": {"enabled": True}}, CPU)
    check_precision({"fp16": {"enabled": True}}, torch.device("cuda", 0))  # only checks, allocates nothing
    check_precision({"bf16": {"enabled": True}}, CPU)
    with pytest.raises(ConfigError, match=r"deepspeed\.bfloat16: write this block as deepspeed\.bf16"):
        check_precision({"bfloat16": {"enabled": True}}, CPU)


def test_loss_scaler_state_round_trip() -> None:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    class Opt:  # what the ZeRO optimizer exposes: a loss_scaler attribute
        def __init__(self) -> None:
            self.loss_scaler = DynamicLossScaler(init_scale=2.0 ** 16, scale_window=1000, min_scale=1.0,
                                                 delayed_shift=1, consecutive_hysteresis=False)

    a, b = Opt(), Opt()
    # where update_scale leaves it after an overflow at iteration 0 and three good steps
    a.loss_scaler.cur_scale, a.loss_scaler.cur_iter, a.loss_scaler.last_overflow_iter = 2.0 ** 15, 4, 0
    state = loss_scaler_state(a)
    assert state == {"cur_scale": 2.0 ** 15, "cur_iter": 4.0, "last_overflow_iter": 0.0, "cur_hysteresis": 1.0}
    assert all(isinstance(v, float) for v in state.values())  # plain numbers: weights_only loads them
    load_loss_scaler_state(b, state)
    assert loss_scaler_state(b) == state and isinstance(b.loss_scaler.cur_iter, int)


def test_more_ranks_than_gpus_is_a_clear_error() -> None:
    check_local_rank(1, 2)
    with pytest.raises(LaunchError, match=r"local rank 2 has no GPU: this node has 2 visible GPU\(s\).*"
                                          r"--nproc_per_node 2.*--num_gpus 2"):
        check_local_rank(2, 2)


def test_all_ranks_true_takes_a_device_flag() -> None:
    assert all_ranks_true(torch.isfinite(torch.tensor(1.0)), CPU) is True
    assert all_ranks_true(torch.isfinite(torch.tensor(float("nan"))), CPU) is False


def test_the_first_build_note_looks_where_torch_caches_deepspeeds_cpu_extension(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastforec.distributed import SHM_EXTENSION, _shm_extension_built

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert not _shm_extension_built()  # nothing compiled there: train.py prints the one-minute note
    (tmp_path / SHM_EXTENSION / f"{SHM_EXTENSION}.so").write_bytes(b"")
    assert _shm_extension_built()
