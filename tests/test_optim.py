"""The optimizer: torch's fused step where every parameter is on CUDA or on the CPU, the same update; the
update itself (SGD with momentum and weight decay, AdamW, the decoders' learning-rate multiplier,
the poly schedule) against a restatement in plain tensor arithmetic."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastforec.config import OptimConfig
from fastforec.models import deeplabv3plus
from fastforec.optim import build_optimizer, use_fused

CFG = OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-2, head_lr_mult=10.0)
MAX_STEPS = 10
STEPS = 2  # the second step uses the momentum buffers (AdamW's moments) and a decayed learning rate
ADAM_EPS = 1e-8  # torch's default, which build_optimizer keeps
UPDATE_ATOL = 1e-6


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return deeplabv3plus(backbone="resnet18", num_classes=3, reconstruction=None, decoder_channels=8).to(device)


@pytest.mark.parametrize(("devices", "fused"), [
    (["cuda", "cuda"], True), (["cpu"], True), (["cuda", "cpu"], False), (["meta"], False), ([], False),
])
def test_the_fused_step_needs_every_parameter_on_one_fused_device(devices: list[str], fused: bool) -> None:
    assert use_fused(devices) is fused


def _poly(step: int) -> float:
    """The poly decay written out: the learning rate of step ``step`` (from 0) is the base one
    times (1 - step / max_steps) ** 0.9."""
    return (1 - step / MAX_STEPS) ** 0.9


def _by_hand(name: str, p: torch.Tensor, g: torch.Tensor, state: dict, step: int, cfg: OptimConfig) -> torch.Tensor:
    """The parameter after one optimizer step, written out: the decoders (everything outside
    ``backbone.``) at ``lr * head_lr_mult``, both groups on the poly schedule."""
    lr = cfg.lr * (1 if name.startswith("backbone.") else cfg.head_lr_mult) * _poly(step)
    if cfg.name == "sgd":  # d = g + wd * p; buf = d at the first step, then momentum * buf + d; p - lr * buf
        d = g + cfg.weight_decay * p
        buf = d if name not in state else cfg.momentum * state[name] + d
        state[name] = buf
        return p - lr * buf
    b1, b2 = cfg.betas  # AdamW: decay decoupled from the gradient, bias-corrected moments
    m, v = state.get(name, (torch.zeros_like(p), torch.zeros_like(p)))
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    state[name] = (m, v)
    t = step + 1
    return p * (1 - lr * cfg.weight_decay) - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + ADAM_EPS)


def _check_steps(model: torch.nn.Module, cfg: OptimConfig, *, fused: bool, allow_fused: bool = True) -> None:
    """Each step of build_optimizer's optimizer against :func:`_by_hand` from the same weights and
    gradients (comparing whole runs instead would compare rounding amplified through the network)."""
    opt, scheduler = build_optimizer(model, cfg, max_steps=MAX_STEPS, allow_fused=allow_fused)
    assert all(bool(g["fused"]) is fused for g in opt.param_groups)
    heads = {id(p) for p in opt.param_groups[1]["params"]}
    assert all((id(p) in heads) != n.startswith("backbone.") for n, p in model.named_parameters())
    device = next(model.parameters()).device
    torch.manual_seed(1)
    state: dict = {}
    for step in range(STEPS):
        x = torch.rand(2, 3, 32, 32, device=device)
        opt.zero_grad()
        model(x)["seg"].square().mean().backward()
        before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
        opt.step()
        scheduler.step()
        names = [n for n, _ in model.named_parameters()]
        got = torch.cat([p.detach().flatten() for p in model.parameters()])
        want = torch.cat([_by_hand(n, *before[n], state, step, cfg).flatten() for n in names])
        # atol: a few float32 ulps of a weight the step moves by up to lr * head_lr_mult = 1 (AdamW's
        # first step is +-lr per element); a wrong formula is off by a fraction of lr, 1e5x more
        torch.testing.assert_close(got, want, rtol=1e-5, atol=UPDATE_ATOL, msg=lambda m: f"step {step}: {m}")
        moved = sum(not torch.equal(p.detach(), before[n][0]) for n, p in model.named_parameters())
        assert moved > 0.9 * len(names)  # a real step (a few BN biases of this tiny input have no gradient)


@pytest.mark.parametrize("allow_fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_cpu_update_is_sgd_momentum_or_adamw_on_the_poly_schedule(name: str, allow_fused: bool) -> None:
    # fused: the trainer's step; plain: torch's default loop, the bench baseline's (allow_fused=False)
    _check_steps(_model("cpu"), dataclasses.replace(CFG, name=name), fused=allow_fused, allow_fused=allow_fused)


def test_poly_schedule_reaches_zero_at_max_steps() -> None:
    opt, scheduler = build_optimizer(_model("cpu"), CFG, max_steps=4)
    lrs = []
    for _ in range(6):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()  # no gradients: only the schedule moves
        scheduler.step()
    want = [CFG.lr * (1 - s / 4) ** 0.9 for s in range(4)] + [0.0, 0.0]
    assert [b for b, _ in lrs] == pytest.approx(want, rel=1e-12, abs=0)
    assert [h for _, h in lrs] == pytest.approx([CFG.head_lr_mult * w for w in want], rel=1e-12, abs=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_parameters_get_the_fused_step_with_the_same_update() -> None:
    _check_steps(_model("cuda"), CFG, fused=True)
