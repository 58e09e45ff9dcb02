"""Fused kernels for pseudo-labelling and the masked losses (issue #5).

The specification is the PyTorch reference in ``fastforec/losses.py`` (``*_reference``); these
give the same values and gradients while reading each input once and keeping no full-size
intermediate but the gradient. Conventions as there: labels int64 (B, H, W); conf fp32
(B, H, W); valid/mask/fg bool (B, H, W); logits and images float32/bfloat16/float16
(B, C, H, W), NCHW-contiguous, channels-last or strided; arithmetic in fp32; a loss whose count
is 0 is exactly 0 with a zero gradient.

Backends: ``"triton"`` (kernels/_triton_impl.py, imported on first use; on the CPU only under
``TRITON_INTERPRET=1``), ``"torch"`` (kernels/_chunked.py, cache-sized chunks, fast on the CPU)
and ``"auto"`` (Triton on CUDA or when the interpreter is requested, else torch).

This package must not import ``fastforec`` (``fastforec.losses`` imports it).
"""

from __future__ import annotations

from types import ModuleType
from typing import Sequence

import torch

from . import _checks, _chunked
from ._autograd import fused_loss
from ._dispatch import BACKENDS, Backend, resolve_backend

__all__ = ["BACKENDS", "Backend", "masked_mse", "pseudo_label", "pseudo_label_ce", "resolve_backend"]

_LABEL_DTYPES = (torch.int64,)
_MAP_DTYPES = (torch.bool,)
_CONF_DTYPES = (torch.float32,)


def _implementation(backend: str, tensor: torch.Tensor) -> ModuleType:
    if resolve_backend(backend, tensor) == "triton":
        # Deferred: defining the @triton.jit functions reads TRITON_INTERPRET (see the module).
        from . import _triton_impl

        return _triton_impl
    return _chunked


def pseudo_label(teacher_logits: torch.Tensor, fg_classes: Sequence[int] | torch.Tensor | None = None, *,
                 backend: Backend = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(label int64, conf fp32, fg bool), each (B, H, W), from (B, C, H, W) teacher logits.

    label = argmax (ties to the lowest class), conf = max softmax probability, fg = label is in
    ``fg_classes`` (all False when None). Not differentiable (the teacher runs without grad).
    """
    _checks.check_float_nchw("teacher_logits", teacher_logits)
    impl = _implementation(backend, teacher_logits)
    lut = _checks.fg_lookup_table(fg_classes, teacher_logits.shape[1], teacher_logits.device)
    with torch.no_grad():
        return impl.pseudo_label(teacher_logits.detach(), lut)


def pseudo_label_ce(student_logits: torch.Tensor, label: torch.Tensor, conf: torch.Tensor, valid: torch.Tensor,
                    conf_thresh: float, *, backend: Backend = "auto") -> torch.Tensor:
    """sum over pixels of CE(student, label) * [conf > conf_thresh] * valid / number of valid
    pixels (0 when there is none); fp32 scalar, differentiable w.r.t. ``student_logits``."""
    _checks.check_float_nchw("student_logits", student_logits)
    like = {"like": student_logits, "like_name": "student_logits"}
    _checks.check_pixel_map("label", label, dtypes=_LABEL_DTYPES, **like)
    _checks.check_pixel_map("conf", conf, dtypes=_CONF_DTYPES, **like)
    _checks.check_pixel_map("valid", valid, dtypes=_MAP_DTYPES, **like)
    _checks.check_labels_in_range(label, student_logits.shape[1])
    impl = _implementation(backend, student_logits)
    return fused_loss(impl.pseudo_label_ce, student_logits, label.detach(), conf.detach(), valid,
                      float(conf_thresh))


def masked_mse(rec: torch.Tensor, image: torch.Tensor, fg: torch.Tensor, mask: torch.Tensor, *,
               backend: Backend = "auto") -> torch.Tensor:
    """sum(mask * (rec - image * fg)^2) / (3 * sum(mask)) (0 when the mask is empty); fp32
    scalar, differentiable w.r.t. ``rec`` only (``image`` is data: it must not need a gradient)."""
    _checks.check_float_nchw("rec", rec, channels=_checks.RGB_CHANNELS)
    _checks.check_float_nchw("image", image, channels=_checks.RGB_CHANNELS)
    if image.shape != rec.shape or image.device != rec.device:
        raise ValueError(f"kernels: image must match rec, got image {tuple(image.shape)} on {image.device} "
                         f"and rec {tuple(rec.shape)} on {rec.device}")
    if image.requires_grad and torch.is_grad_enabled():
        raise ValueError("kernels: masked_mse is differentiable w.r.t. rec only, but image requires grad; "
                         "pass image.detach() (it is the reconstruction target)")
    like = {"like": rec, "like_name": "rec"}
    _checks.check_pixel_map("fg", fg, dtypes=_MAP_DTYPES, **like)
    _checks.check_pixel_map("mask", mask, dtypes=_MAP_DTYPES, **like)
    impl = _implementation(backend, rec)
    return fused_loss(impl.masked_mse, rec, image, fg, mask)
