"""SGD with parameter groups (decoders at ``head_lr_mult``) and the poly learning-rate decay."""

from __future__ import annotations

from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR

from fastforec.config import OptimConfig
from fastforec.models import DeepLabV3Plus


def param_groups(model: DeepLabV3Plus, cfg: OptimConfig) -> list[dict]:
    head = {id(p) for p in model.head_parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head]
    heads = [p for p in model.parameters() if id(p) in head]
    return [{"params": backbone, "lr": cfg.lr, "name": "backbone"},
            {"params": heads, "lr": cfg.lr * cfg.head_lr_mult, "name": "heads"}]


class PolyDecay:
    """(1 - it / max_it) ** power, a picklable callable for LambdaLR."""

    def __init__(self, max_steps: int, power: float):
        self.max_steps = max(1, max_steps)
        self.power = power

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - min(step, self.max_steps) / self.max_steps) ** self.power


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, max_steps: int) -> tuple[SGD, LambdaLR]:
    opt = SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, LambdaLR(opt, PolyDecay(max_steps, cfg.poly_power))
