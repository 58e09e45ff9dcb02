"""Inference for evaluation: whole image (VOC) or sliding window (Cityscapes), and mIoU."""

from __future__ import annotations

import math
from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastforec.metrics import ConfusionMatrix

EvalMode = Literal["whole", "sliding"]
# How sliding windows are placed and merged (config.EvalConfig.sliding_protocol):
# "border_aligned": windows every `stride`, the last one moved back to end at the border (every
# window full-sized, zero padding only for images smaller than the window), logits averaged;
# "unimatch": UniMatch's (and UniMatch V2's) `evaluate(..., 'sliding_window')`: windows start at
# 0, stride, 2*stride, ... while inside the image, those at the border are cut short, and their
# softmax probabilities are summed; "unimatch_v2": UniMatch V2's: the windows of "border_aligned"
# (every one full-sized, the last moved back to the border), softmax probabilities summed.
SlidingProtocol = Literal["border_aligned", "unimatch", "unimatch_v2"]
# Datasets whose images are larger than the training crop and are scored by sliding window
# (Cityscapes, as its peers do); every other dataset is scored on whole images.
SLIDING_DATASETS = ("cityscapes",)


def resolve_eval_mode(mode: str, dataset: str) -> EvalMode:
    """The one rule for whole image vs sliding window: an explicit ``eval.mode`` wins, "auto"
    follows the dataset kind (the manifest's ``dataset``, carried in every checkpoint)."""
    if mode in ("whole", "sliding"):
        return mode  # type: ignore[return-value]
    if mode != "auto":
        raise ValueError(f"eval mode must be auto, whole or sliding, got {mode!r}")
    return "sliding" if dataset in SLIDING_DATASETS else "whole"


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    n = math.ceil((size - window) / stride) + 1
    # the last window is aligned to the border so every pixel is covered
    return sorted({min(i * stride, size - window) for i in range(n)})


@torch.no_grad()
def sliding_window_logits(model: nn.Module, image: torch.Tensor, *, num_classes: int, window: int,
                          stride: int, softmax: bool = False) -> torch.Tensor:
    """Average of the logits (``softmax``: of the probabilities) of overlapping ``window`` x
    ``window`` crops (zero-padded when the image is smaller than the window), at the image's
    resolution. The average has the argmax of UniMatch V2's sum: each pixel's count is one number."""
    b, _, h, w = image.shape
    ph, pw = max(0, window - h), max(0, window - w)
    padded = F.pad(image, (0, pw, 0, ph)) if ph or pw else image
    H, W = padded.shape[-2:]
    logits = torch.zeros(b, num_classes, H, W, device=image.device)
    count = torch.zeros(1, 1, H, W, device=image.device)
    for y in _window_starts(H, window, stride):
        for x in _window_starts(W, window, stride):
            crop = padded[:, :, y:y + window, x:x + window]
            out = model(crop)["seg"].float()
            logits[:, :, y:y + window, x:x + window] += out.softmax(dim=1) if softmax else out
            count[:, :, y:y + window, x:x + window] += 1
    return (logits / count)[:, :, :h, :w]


@torch.no_grad()
def sliding_window_unimatch(model: nn.Module, image: torch.Tensor, *, num_classes: int, window: int,
                            stride: int) -> torch.Tensor:
    """UniMatch's sliding window: the sum of the softmax of windows starting at multiples of
    ``stride`` (cut short at the image border), at the image's resolution."""
    b, _, h, w = image.shape
    total = torch.zeros(b, num_classes, h, w, device=image.device)
    for y in range(0, h, stride):
        for x in range(0, w, stride):
            crop = image[:, :, y:y + window, x:x + window]
            total[:, :, y:y + window, x:x + window] += model(crop)["seg"].float().softmax(dim=1)
    return total


def nearest_multiple(size: int, multiple: int) -> int:
    """UniMatch V2's ``int(size / multiple + 0.5) * multiple`` (at least one multiple)."""
    return max(multiple, int(size / multiple + 0.5) * multiple)


@torch.no_grad()
def whole_image_logits(model: nn.Module, image: torch.Tensor, *, size_multiple: int | None = None) -> torch.Tensor:
    """The model's logits on the whole image; with ``size_multiple`` the image is resized to the
    nearest multiple of it first and the logits back to its size (bilinear, align_corners=True,
    as UniMatch V2's ``evaluate(..., multiplier=14)``)."""
    if size_multiple is None:
        return model(image)["seg"]
    h, w = image.shape[-2:]
    size = (nearest_multiple(h, size_multiple), nearest_multiple(w, size_multiple))
    if size == (h, w):
        return model(image)["seg"]
    logits = model(F.interpolate(image, size=size, mode="bilinear", align_corners=True))["seg"]
    return F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=True)


@torch.no_grad()
def predict(model: nn.Module, image: torch.Tensor, *, mode: EvalMode, num_classes: int, window: int,
            stride: int, protocol: SlidingProtocol = "border_aligned", size_multiple: int | None = None
            ) -> torch.Tensor:
    """Class map (B, H, W) for images in [0, 1]."""
    if mode == "sliding" and protocol == "unimatch":
        logits = sliding_window_unimatch(model, image, num_classes=num_classes, window=window, stride=stride)
    elif mode == "sliding":
        logits = sliding_window_logits(model, image, num_classes=num_classes, window=window, stride=stride,
                                       softmax=protocol == "unimatch_v2")
    else:
        logits = whole_image_logits(model, image, size_multiple=size_multiple)
    return logits.argmax(dim=1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, num_classes: int,
             ignore_index: int, mode: EvalMode, window: int, stride: int, device: torch.device,
             autocast: Callable[[], object], on_batch: Callable[[int], None] | None = None,
             protocol: SlidingProtocol = "border_aligned", size_multiple: int | None = None) -> dict[str, object]:
    """mIoU over ``batches`` of this rank, reduced over all ranks (every rank must call it)."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index, device=device)
    for batch in batches:
        with autocast():
            pred = predict(model, batch["image"].to(device), mode=mode, num_classes=num_classes,
                           window=window, stride=stride, protocol=protocol, size_multiple=size_multiple)
        cm.update(pred, batch["label"].to(device))
        if on_batch is not None:
            on_batch(int(batch["image"].shape[0]))  # images of this batch (progress reports)
    cm.all_reduce()
    model.train(was_training)
    return cm.compute()
