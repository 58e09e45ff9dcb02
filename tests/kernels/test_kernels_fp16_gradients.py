"""fp16 gradients of the fused losses under a loss scale: no underflow to zero.

With fp16 training the loss is multiplied by a large scale before backward precisely so that
small gradients survive in fp16. The fused losses must therefore apply that scale before the
1 / count normalisation and store the gradient once; storing ``raw / count`` in fp16 first
flushes most entries to zero (the count is tens of thousands of pixels here, millions in a real
batch). Compared with the fp32 reference scaled by the same ``grad_output``.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import BACKENDS, Shape, logits, pixel_rand

import fastforec_kernels as kernels
from fastforec.losses import masked_mse_reference, pseudo_label_ce_reference

LOSS_SCALE = 2.0 ** 16  # DeepSpeed's initial dynamic loss scale
MAX_REL_L2 = 1e-3
SHAPE = Shape(2, 21, 72, 80, False)  # 11520 pixels: raw / count is below fp16's normal range
THRESH = 0.0
DARK = 0.01
REC_ERROR = 1e-4


def _rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).norm() / ref.norm())


def _check(grad: torch.Tensor, ref: torch.Tensor) -> None:
    assert grad.dtype == torch.float16
    assert torch.isfinite(grad).all()
    assert _rel_l2(grad, ref) < MAX_REL_L2
    # an entry fp16 can represent must not come out as zero
    extra_zeros = (grad == 0) & (ref.half() != 0)
    assert int(extra_zeros.sum()) == 0, f"{int(extra_zeros.sum())} gradient entries underflowed to zero"


def _grad(fn, x0: torch.Tensor, *rest) -> torch.Tensor:
    x = x0.detach().clone().requires_grad_()
    (fn(x, *rest) * LOSS_SCALE).backward()
    return x.grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_pseudo_label_ce_fp16_gradient_survives_the_loss_scale(backend: str) -> None:
    student = logits(SHAPE, torch.float16, seed=11)
    gen = torch.Generator().manual_seed(12)
    label = torch.randint(0, SHAPE.classes, (SHAPE.batch, SHAPE.height, SHAPE.width), generator=gen)
    conf = pixel_rand(SHAPE, 13)
    valid = pixel_rand(SHAPE, 14) < 0.9
    grad = _grad(lambda *a: kernels.pseudo_label_ce(*a, backend=backend), student, label, conf, valid, THRESH)
    ref = _grad(pseudo_label_ce_reference, student.float(), label, conf, valid, THRESH)
    # the case is a real one: the unscaled, normalised gradient underflows in fp16 for many entries
    assert int(((ref / LOSS_SCALE).half() == 0).sum() - (ref.half() == 0).sum()) > ref.numel() // 10
    _check(grad, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_mse_fp16_gradient_survives_the_loss_scale(backend: str) -> None:
    gen = torch.Generator().manual_seed(21)
    size = (SHAPE.batch, 3, SHAPE.height, SHAPE.width)
    # a dark image (fine fp16 spacing) and a reconstruction close to it, as late in training
    image = (DARK * torch.rand(size, generator=gen)).half()
    rec = (image.float() + REC_ERROR * torch.randn(size, generator=gen)).half()
    fg = pixel_rand(SHAPE, 22) < 0.9
    mask = pixel_rand(SHAPE, 23) < 0.9
    grad = _grad(lambda *a: kernels.masked_mse(*a, backend=backend), rec, image, fg, mask)
    ref = _grad(masked_mse_reference, rec.float(), image, fg, mask)
    assert int(((ref / LOSS_SCALE).half() == 0).sum() - (ref.half() == 0).sum()) > ref.numel() // 10
    _check(grad, ref)
