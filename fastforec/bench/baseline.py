"""The training step as the research repositories write it: the baseline of `bench --what step
--baseline`.

UniMatch, UniMatch V2, U2PL and their kin train in fp32 with a ``torch.optim`` optimizer built the
plain way, no DeepSpeed, no fused or Triton losses, and (UniMatch V2, U2PL) a Python loop over the
parameters and buffers for the EMA teacher. :class:`PlainLoop` is that loop around the *same*
network, the same method (``fastforec.methods``: the same forward passes, images per pass and loss
formulas) and the same batches as the trainer under test, so that the two differ only in how the
step is executed: precision, optimizer implementation, DeepSpeed, kernels, EMA.

What is deliberately the same as the trainer: the model code, the loss assembly (with the PyTorch
path of the loss kernels, ``method.kernels = "torch"``), the poly schedule. What is the peers':
fp32 throughout, ``torch.optim.SGD``/``AdamW`` with their default implementation, ``zero_grad`` +
``backward`` + ``step``, the EMA as a Python loop. Not modelled: UniMatch's extra no-grad forward
of a second unlabeled batch for its CutMix partner (fastforec takes the partner from the same
batch, see fastforec.methods), DDP's gradient all-reduce (one process here).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from fastforec import losses, methods
from fastforec.config import Config
from fastforec.models import build_model
from fastforec.optim import build_optimizer
from fastforec.teacher import ema_alpha

PRECISION = "fp32"


class PlainLoop:
    """``train_step(labeled, unlabeled)`` the way the peers' training scripts run it."""

    def __init__(self, cfg: Config, *, num_classes: int, fg_classes: list[int], device: torch.device,
                 max_steps: int, accum: int = 1):
        self.cfg = cfg
        self.device = device
        self.accum = accum
        self.micro = 0  # micro-batches since the last optimizer step
        method = dataclasses.replace(cfg.method, kernels="torch")
        torch.manual_seed(cfg.train.seed)  # the trainer's initial weights (same seed, same builder)
        self.model = build_model(cfg.model, num_classes=num_classes, reconstruction=method.reconstruction,
                                 with_pretrained=True, show_pretrained=False).to(device)
        self.model.train()
        self.teacher: nn.Module | None = None
        if methods.base_of(method).teacher:
            self.teacher = self.model.segmentation_copy().to(device)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.optim, max_steps=max_steps,
                                                         allow_fused=False)
        self.step = 0
        self.ctx = methods.StepModels(student=self.model, teacher=self._teacher_forward, method=method,
                                      fg_classes=fg_classes, input_dtype=torch.float32,
                                      autocast=contextlib.nullcontext, device=device,
                                      labeled_loss=losses.labeled_loss(cfg.loss))

    @torch.no_grad()
    def _teacher_forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.teacher is not None
        return self.teacher(x)

    def train_step(self, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
                   ) -> dict[str, torch.Tensor]:
        use_u = unlabeled if methods.base_of(self.cfg.method).unlabeled else None
        terms = methods.compute_losses(self.ctx, labeled, use_u)
        if self.micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        (terms["loss"] / self.accum).backward()  # / 1 is exact: no accumulation, the plain loss
        self.micro += 1
        if self.micro < self.accum:
            return terms
        self.micro = 0
        self.optimizer.step()
        self.scheduler.step()
        if self.teacher is not None:
            self._ema_update()
        self.step += 1
        return terms

    @torch.no_grad()
    def _ema_update(self) -> None:
        # UniMatch V2's and U2PL's loop: one multiply-add per tensor, buffers included
        assert self.teacher is not None
        alpha = ema_alpha(self.step, self.cfg.method.ema_decay)
        student = dict(self.model.named_parameters())
        for name, t in self.teacher.named_parameters():
            t.mul_(alpha).add_(student[name].detach(), alpha=1 - alpha)
        buffers = dict(self.model.named_buffers())
        for name, t in self.teacher.named_buffers():
            if t.is_floating_point():
                t.mul_(alpha).add_(buffers[name], alpha=1 - alpha)
            else:
                t.copy_(buffers[name])

