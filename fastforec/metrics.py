"""Confusion-matrix mIoU, reducible across ranks."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def nan_to_none(x: float) -> float | None:
    """IoU of an absent class (NaN) as JSON null: strict JSON has no NaN."""
    return None if isinstance(x, float) and math.isnan(x) else x


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) matrix: rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # int64: a Cityscapes val set has ~1e9 pixels, beyond int32 per cell in the worst case.
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target != self.ignore_index
        t = target[keep].to(torch.int64)
        p = pred.to(self.mat.device)[keep.to(self.mat.device)].to(torch.int64)
        t = t.to(self.mat.device)
        if t.numel() and (t.max() >= self.num_classes or t.min() < 0):
            raise ValueError(f"target holds class {int(t.max())} outside 0..{self.num_classes - 1} "
                             f"(and not ignore_index={self.ignore_index})")
        idx = t * self.num_classes + p
        self.mat += torch.bincount(idx, minlength=self.num_classes ** 2).view(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        """Sum over ranks; a no-op without a process group."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self.mat.zero_()

    def compute(self) -> dict[str, object]:
        """``miou`` over classes present in ground truth or prediction; ``iou`` per class (NaN if absent)."""
        mat = self.mat.double().cpu()
        tp = mat.diag()
        union = mat.sum(0) + mat.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
        present = union > 0
        miou = float(iou[present].mean()) if present.any() else float("nan")
        acc = float(tp.sum() / mat.sum()) if mat.sum() > 0 else float("nan")
        return {"miou": miou, "iou": iou.tolist(), "pixel_acc": acc}
