"""FLOPs of a training step, counted with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matmuls, forward and backward; elementwise work, the optimizer and the EMA
count as zero), so MFU means *model* FLOP utilisation."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastforec.bench.harness import Batch
from fastforec.config import Config
from fastforec.methods import base_of
from fastforec.models import build_model

DEFAULT_NUM_CLASSES = 21  # VOC; only used when counting FLOPs without a dataset
TERA = 1e12
GIGA = 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn`` dispatches (a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def step_flops(trainer: Any, batch: Batch) -> int:
    """FLOPs of one real ``train_step``: teacher forward, student forward and backward, losses,
    optimizer, EMA (the last three are elementwise, 0 FLOPs in the counter's model)."""
    labeled, unlabeled = batch
    return count_flops(lambda: trainer.train_step(labeled, unlabeled))


def model_step_flops(cfg: Config, *, num_classes: int) -> dict[str, int]:
    """FLOPs of one training step of ``cfg``'s model, counted on the meta device (shapes only:
    nothing is allocated or computed, so a ResNet-101 at crop 712 takes a second).

    It mirrors ``fastforec.methods``: mean teacher: teacher forward on B weak views, student
    forward and backward on [B labeled ; B strong]; FixMatch/UniMatch: student forward and backward
    on [B labeled ; B weak] (with UniMatch's perturbed stream) and on the B (UniMatch: 2B) strong
    views; UniMatch V2: teacher forward on B weak views, student on B labeled (+ B weak with an
    auxiliary task) and on the 2B strong views; B labeled for ``supervised``. The input image
    needs no gradient, as in the trainer.
    """
    m = cfg.method
    b, crop = cfg.data.batch_size, cfg.data.crop_size
    base = base_of(m)
    semi = base.unlabeled
    with torch.device("meta"):
        # the model's FLOPs, not activation checkpointing's recomputation (MFU's convention)
        model_cfg = dataclasses.replace(cfg.model, activation_checkpointing=False)
        student = build_model(model_cfg, num_classes=num_classes, reconstruction=m.reconstruction)
        teacher = student.segmentation_copy().eval() if base.teacher else None
        x = torch.empty((2 * b if semi else b), 3, crop, crop)
        strong = torch.empty(base.strong_views * b, 3, crop, crop)
    teacher_flops = 0
    if teacher is not None:
        with torch.no_grad():
            teacher_flops = count_flops(lambda: teacher(x[:b]))

    def student_step() -> None:
        if semi and m.base == "unimatch_v2":
            labeled = x if m.reconstruction is not None else x[:b]
            out = {**{f"a_{k}": v for k, v in student(labeled).items()},
                   **student(strong, comp_drop_keep=m.comp_drop_keep)}
        elif not semi or base.teacher:
            out = student(x)
        else:  # self-training: [labeled ; weak] (+ perturbed stream), then the strong views
            fp = m.fp_dropout if m.base == "unimatch" else 0.0
            out = {**{f"a_{k}": v for k, v in student(x, fp_dropout=fp, fp_from=b).items()}, **student(strong)}
        sum(v.sum() for v in out.values()).backward()
    student_flops = count_flops(student_step)
    return {"teacher": teacher_flops, "student": student_flops, "total": teacher_flops + student_flops}
