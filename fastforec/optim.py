"""SGD or AdamW with parameter groups (decoders at ``head_lr_mult``) and the poly learning-rate decay.

The step is torch's fused implementation on CUDA and on the CPU: one kernel for the whole parameter
list, what apex's ``FusedSGD`` / ``FusedAdam`` gave the peers on GPUs (docs/architecture.md, "apex").
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from fastforec.config import OptimConfig
from fastforec.models.segmentor import Segmentor

# Devices whose parameters get torch's fused optimizer step (one kernel for the whole parameter list).
# On CUDA it replaces one small kernel per tensor. On the CPU torch's default is a Python loop over
# the tensors (its foreach kernels are for accelerators); the fused CPU kernel is one pass over each
# tensor. Measured on a ViT-S/14 (21.6 M parameters, one thread, AMD EPYC): AdamW 116 ms (loop) /
# 90 ms (foreach) / 14 ms (fused) per step, SGD with momentum 19 / 28 / 11 ms. The update is the
# same formula (tests/test_optim.py checks each against the one written out by hand).
FUSED_DEVICES = frozenset({"cuda", "cpu"})


def param_groups(model: Segmentor, cfg: OptimConfig) -> list[dict]:
    # frozen parameters (DPT's never-used refinenet4 unit) stay out of the optimizer, so that no
    # weight decay moves them
    head = {id(p) for p in model.head_parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    backbone = [p for p in trained if id(p) not in head]
    heads = [p for p in trained if id(p) in head]
    return [{"params": backbone, "lr": cfg.lr, "name": "backbone"},
            {"params": heads, "lr": cfg.lr * cfg.head_lr_mult, "name": "heads"}]


def use_fused(device_types: Iterable[str]) -> bool:
    """The fused step when every parameter lives on one device type of ``FUSED_DEVICES`` (the
    fused kernel needs them all on one kind of device)."""
    types = set(device_types)
    return len(types) == 1 and types <= FUSED_DEVICES


class PolyDecay:
    """(1 - it / max_it) ** power, a picklable callable for LambdaLR."""

    def __init__(self, max_steps: int, power: float):
        self.max_steps = max(1, max_steps)
        self.power = power

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - min(step, self.max_steps) / self.max_steps) ** self.power


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, max_steps: int,
                    allow_fused: bool = True) -> tuple[Optimizer, LambdaLR]:
    """Call it after the model is on its device: the device decides the fused step
    (``allow_fused=False``: torch's default implementation, as the research repos build it: a
    Python loop over the tensors on the CPU, foreach kernels on CUDA).

    AdamW as UniMatch V2 runs it: decoupled weight decay on every parameter (biases and norms
    included), the same betas for both groups."""
    groups = param_groups(model, cfg)
    fused = (allow_fused and use_fused(p.device.type for g in groups for p in g["params"])) or None
    if cfg.name == "adamw":
        opt: Optimizer = AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=fused)
    else:
        opt = SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    return opt, LambdaLR(opt, PolyDecay(max_steps, cfg.poly_power))
