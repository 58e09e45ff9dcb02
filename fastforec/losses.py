"""Losses of the method (docs/architecture.md section A, step 5).

Conventions: images are float RGB in [0, 1], (B, 3, H, W); labels are int64 (B, H, W) with 255 =
ignore; ``valid``/``mask``/``fg`` are bool (B, H, W). Every loss that normalises by a count
returns exactly 0 (and a zero gradient) when the count is 0, never NaN.

The ``*_reference`` functions are the plain PyTorch compositions: they are the specification of
the fused kernels in ``kernels/`` and are what the tests compare against. They compute in fp32,
or in the ``dtype`` asked for (fp64: ``bench --what gpu-check``'s ground truth). The public functions
(``pseudo_label``, ``pseudo_label_ce``, ``masked_mse``) dispatch to ``kernels`` so the trainer
gets the fused versions by default.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import fastforec_kernels as kernels
from fastforec.config import LossConfig

IGNORE_INDEX = 255
Backend = Literal["auto", "triton", "torch"]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # clamp keeps 0/0 at 0 instead of NaN; num is 0 whenever den is 0 here.
    return num / den.clamp_min(1)


def foreground_map(label: Tensor, fg_classes: Sequence[int] | Tensor) -> Tensor:
    """Bool map: the label is one of ``fg_classes`` (ignore pixels are not foreground)."""
    if isinstance(fg_classes, Tensor):
        classes = fg_classes.to(device=label.device, dtype=label.dtype)
    else:  # made once per (classes, device, dtype): a copy to the GPU at every step would block it
        classes = _class_tensor(tuple(fg_classes), label.device, label.dtype)
    return torch.isin(label, classes)


@functools.lru_cache(maxsize=64)
def _class_tensor(classes: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.tensor(classes, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Supervised


def supervised_ce(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over pixels whose label is not ``ignore_index`` (0 if there are none)."""
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return _safe_div(loss, (target != ignore_index).sum())


def ohem_ce(logits: Tensor, target: Tensor, *, thresh: float, min_kept: int,
            ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Online hard example mining CE, as UniMatch's and U2PL's ``ProbOhemCrossEntropy2d``: over the
    whole batch, keep the valid pixels whose softmax probability of the true class is <= ``thresh``,
    raising the threshold to the ``min_kept``-th smallest probability when fewer than ``min_kept``
    pixels fall below it (ties with that value are all kept); fewer valid pixels than ``min_kept``
    means plain CE over all of them. Mean CE over the kept pixels; 0 when none is kept (the source
    gives NaN there).

    The ``min_kept``-th smallest value comes from ``kthvalue`` (a selection, not a sort of the
    millions of pixels), and the branches are tensor ``where``s: no host sync."""
    logits = logits.float()
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    prob = logits.softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    # ignored pixels count as certain (probability 1), as in the source, so they are never the k-th
    prob = torch.where(valid, prob, torch.ones_like(prob)).flatten()
    k = min(prob.numel(), min_kept)
    kth = prob.kthvalue(k).values
    threshold = torch.clamp(kth, min=thresh)  # the source: thresh, or the k-th value when it is larger
    num_valid = valid.sum()
    kept = valid & ((prob.view_as(valid) <= threshold) | (num_valid < min_kept))
    ce = F.cross_entropy(logits, safe, reduction="none")
    return _safe_div((ce * kept).sum(), kept.sum())


def labeled_loss(cfg: LossConfig) -> Callable[[Tensor, Tensor], Tensor]:
    """The supervised loss ``cfg`` names, as ``loss(logits, target)``."""
    if cfg.labeled == "ohem":
        return functools.partial(ohem_ce, thresh=cfg.ohem_thresh, min_kept=cfg.ohem_min_kept)
    return supervised_ce


# ---------------------------------------------------------------------------------------------
# Pseudo-labels


def pseudo_label_reference(teacher_logits: Tensor, fg_classes: Sequence[int] | None = None, *,
                           dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """(label int64 (B,H,W), conf ``dtype`` (B,H,W), fg bool (B,H,W)) from teacher logits."""
    prob = teacher_logits.to(dtype).softmax(dim=1)
    conf, label = prob.max(dim=1)
    fg = foreground_map(label, fg_classes) if fg_classes is not None else torch.zeros_like(label, dtype=torch.bool)
    return label, conf, fg


def pseudo_label_ce_reference(student_logits: Tensor, label: Tensor, conf: Tensor, valid: Tensor,
                              conf_thresh: float, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """sum over pixels of CE(student, label) * [conf > thresh] * valid / number of valid pixels."""
    ce = F.cross_entropy(student_logits.to(dtype), label, reduction="none")
    keep = (conf > conf_thresh) & valid
    return _safe_div((ce * keep).sum(), valid.sum())


def masked_mse_reference(rec: Tensor, image: Tensor, fg: Tensor, mask: Tensor, *,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """sum(mask * (rec - image * fg)^2) / (3 * sum(mask)); 0 when the mask is empty."""
    target = image.to(dtype) * fg.unsqueeze(1)
    err = (rec.to(dtype) - target).pow(2) * mask.unsqueeze(1)
    return _safe_div(err.sum(), 3 * mask.sum())


def pseudo_label(teacher_logits: Tensor, fg_classes: Sequence[int] | None = None, *,
                 backend: Backend = "auto") -> tuple[Tensor, Tensor, Tensor]:
    return kernels.pseudo_label(teacher_logits, fg_classes, backend=backend)


def pseudo_label_ce(student_logits: Tensor, label: Tensor, conf: Tensor, valid: Tensor,
                    conf_thresh: float, *, backend: Backend = "auto") -> Tensor:
    return kernels.pseudo_label_ce(student_logits, label, conf, valid, conf_thresh, backend=backend)


def masked_mse(rec: Tensor, image: Tensor, fg: Tensor, mask: Tensor, *, backend: Backend = "auto") -> Tensor:
    return kernels.masked_mse(rec, image, fg, mask, backend=backend)


# ---------------------------------------------------------------------------------------------
# Reconstruction targets


def rec_targets_labeled(label: Tensor, *, method: str, fg_classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(fg, mask) for a labeled batch: the target image is ``image * fg``, the loss covers ``mask``.

    ``rec``: the whole image where the label is not ignore. ``forec``/``fgbg``: foreground
    classes only (background pixels are reconstructed as black), same mask.
    """
    mask = label != IGNORE_INDEX
    fg = mask.clone() if method == "rec" else foreground_map(label, fg_classes)
    return fg, mask


def rec_targets_unlabeled(pl_fg: Tensor, conf: Tensor, valid: Tensor, *, method: str,
                          rec_thresh: float) -> tuple[Tensor, Tensor]:
    """(fg, mask) for an unlabeled batch from the teacher's (CutMix-ed) pseudo-labels.

    ``rec``: every valid pixel, target = the strong image. ``forec``/``fgbg``: target = the
    strong image where the pseudo-label is foreground, and pixels the teacher is unsure of
    (conf <= rec_thresh) are left out of the loss.
    """
    if method == "rec":
        return valid.clone(), valid
    return pl_fg & valid, valid & (conf > rec_thresh)


def fgbg_loss(logits: Tensor, fg: Tensor, mask: Tensor) -> Tensor:
    """Masked binary cross-entropy of 1-channel fg/bg logits (B,1,H,W) against ``fg``."""
    bce = F.binary_cross_entropy_with_logits(logits.float().squeeze(1), fg.float(), reduction="none")
    return _safe_div((bce * mask).sum(), mask.sum())


# ---------------------------------------------------------------------------------------------
# CutMix


def cutmix(box: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Paste ``b`` into ``a`` where ``box`` (bool (B,H,W)) is set; works for (B,H,W) and (B,C,H,W)."""
    m = box if a.dim() == box.dim() else box.unsqueeze(1)
    return torch.where(m, b, a)


def cutmix_batch(box: Tensor, perm: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Mix every tensor with its batch permutation ``perm`` inside ``box``: the same boxes go to
    the image, the pseudo-label, the confidence and the valid mask, so they stay aligned."""
    return tuple(cutmix(box, t, t[perm]) for t in tensors)
