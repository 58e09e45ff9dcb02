"""Mean teacher: an exponential moving average of the student's encoder + segmentation decoder.

theta_t <- a * theta_t + (1 - a) * theta_s with a = min(1 - 1/(step + 1), ema_decay): at step 0 the
teacher is a copy of the student, and the decay ramps up to ``ema_decay``. Float buffers (BN
statistics) are averaged the same way, integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fastforec.models.segmentor import Segmentor

ParamGetter = Callable[[nn.Parameter], torch.Tensor]


def ema_alpha(step: int, ema_decay: float) -> float:
    return min(1.0 - 1.0 / (step + 1), ema_decay)


class EmaTeacher(nn.Module):
    def __init__(self, student: Segmentor, *, ema_decay: float):
        super().__init__()
        self.ema_decay = ema_decay
        self.module = student.segmentation_copy()
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "EmaTeacher":
        # The teacher always predicts in eval mode (BN running statistics, no dropout).
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.module(x)

    @torch.no_grad()
    def reset_from(self, student: nn.Module) -> None:
        """Become a copy of the student's encoder + segmentation decoder (end of a warm-up)."""
        own = self.module.state_dict()
        self.module.load_state_dict({k: v for k, v in student.state_dict().items() if k in own})

    @torch.no_grad()
    def update(self, student: nn.Module, step: int, fp32_param: ParamGetter | None = None) -> None:
        """Move towards ``student`` (the module or DeepSpeed engine's module).

        ``fp32_param`` maps a student parameter to its fp32 master copy (DeepSpeed ZeRO with
        bf16/fp16 keeps them apart; it is a collective, so every rank must call update).
        """
        alpha = ema_alpha(step, self.ema_decay)
        s_params = dict(student.named_parameters())
        s_buffers = dict(student.named_buffers())
        t_params, src = [], []
        for name, p in self.module.named_parameters():
            sp = s_params[name]
            t_params.append(p)
            src.append((fp32_param(sp) if fp32_param is not None else sp.detach()).to(p.dtype))
        # lerp_(end, weight): t + weight * (s - t) = alpha * t + (1 - alpha) * s
        torch._foreach_lerp_(t_params, src, 1.0 - alpha)
        float_bufs, float_src, int_bufs, int_src = [], [], [], []
        for name, b in self.module.named_buffers():
            sb = s_buffers[name]
            if b.is_floating_point():
                float_bufs.append(b)
                float_src.append(sb.detach().to(b.dtype))
            else:
                int_bufs.append(b)
                int_src.append(sb.detach())
        if float_bufs:
            torch._foreach_lerp_(float_bufs, float_src, 1.0 - alpha)
        if int_bufs:  # one fused copy, not one kernel per BN layer's num_batches_tracked
            torch._foreach_copy_(int_bufs, int_src)
