"""The optimizer: torch's fused SGD exactly where the parameters are on CUDA, the same update."""

from __future__ import annotations

import pytest
import torch

from fastforec.config import OptimConfig
from fastforec.models import deeplabv3plus
from fastforec.optim import build_optimizer, use_fused

CFG = OptimConfig(lr=0.1, momentum=0.9, weight_decay=1e-2, head_lr_mult=10.0)


def _model(device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return deeplabv3plus(backbone="resnet18", num_classes=3, reconstruction=None, decoder_channels=8).to(device)


@pytest.mark.parametrize(("devices", "fused"), [
    (["cuda", "cuda"], True), (["cpu"], False), (["cuda", "cpu"], False), (["meta"], False), ([], False),
])
def test_fused_sgd_is_chosen_only_when_every_parameter_is_on_cuda(devices: list[str], fused: bool) -> None:
    assert use_fused(devices) is fused


def _step(model: torch.nn.Module, fused_expected: bool) -> list[torch.Tensor]:
    opt, _ = build_optimizer(model, CFG, max_steps=10)
    assert all(bool(g["fused"]) is fused_expected for g in opt.param_groups)
    assert [g["lr"] for g in opt.param_groups] == [CFG.lr, CFG.lr * CFG.head_lr_mult]
    x = torch.rand(2, 3, 32, 32, device=next(model.parameters()).device)
    for _ in range(2):  # the second step uses the momentum buffers
        opt.zero_grad()
        model(x)["seg"].square().mean().backward()
        opt.step()
    return [p.detach().cpu() for p in model.parameters()]


def test_cpu_parameters_keep_the_default_sgd() -> None:
    torch.manual_seed(1)
    _step(_model("cpu"), fused_expected=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_parameters_get_the_fused_step_with_the_same_update() -> None:
    torch.manual_seed(1)
    fused = _step(_model("cuda"), fused_expected=True)
    torch.manual_seed(1)
    reference = _model("cuda")
    opt = torch.optim.SGD([{"params": [p for n, p in reference.named_parameters() if n.startswith("backbone")],
                            "lr": CFG.lr},
                           {"params": [p for n, p in reference.named_parameters() if not n.startswith("backbone")],
                            "lr": CFG.lr * CFG.head_lr_mult}],
                          momentum=CFG.momentum, weight_decay=CFG.weight_decay, foreach=True)
    x = torch.rand(2, 3, 32, 32, device="cuda")
    for _ in range(2):
        opt.zero_grad()
        reference(x)["seg"].square().mean().backward()
        opt.step()
    for a, b in zip(fused, (p.detach().cpu() for p in reference.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
