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
PIXEL_MAX = 255.0  # a uint8 image's white, for sliding windows over 8-bit images


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


@torch.no_grad()
def sliding_window_classes(model: nn.Module, image: torch.Tensor, *, num_classes: int, window: int, stride: int,
                           protocol: SlidingProtocol = "border_aligned", dtype: torch.dtype = torch.long
                           ) -> torch.Tensor:
    """Class map (B, H, W) of the sliding window ``protocol``: exactly the argmax of
    :func:`sliding_window_logits` (border_aligned, unimatch_v2) or :func:`sliding_window_unimatch`
    (the same windows, the same sums in the same order), in memory that grows with the image's
    width, not its area. Windows run row by row; rows that no later window reaches are decided
    at once and their scores dropped, so the scores are held for ``window`` rows, not all of them
    (a 6000 x 6000 photo in 21 classes: 0.5 GB instead of 3 GB, plus the model's activations for
    one window instead of the whole image). ``image`` may be uint8 (0..255): each window is then
    scaled to [0, 1] on its own, and the whole image costs one byte per value instead of four."""
    b, _, h, w = image.shape
    if protocol == "unimatch":  # windows at multiples of the stride, cut short at the border
        padded, ys, xs = image, list(range(0, h, stride)), list(range(0, w, stride))
    else:  # full windows, the last moved back to the border; zero padding below the window size
        ph, pw = max(0, window - h), max(0, window - w)
        padded = F.pad(image, (0, pw, 0, ph)) if ph or pw else image
        ys, xs = _window_starts(padded.shape[-2], window, stride), _window_starts(padded.shape[-1], window, stride)
    height, width = padded.shape[-2:]
    softmax, average = protocol != "border_aligned", protocol != "unimatch"
    classes = torch.empty(b, height, width, dtype=dtype, device=image.device)
    scores = torch.zeros(b, num_classes, window, width, device=image.device)  # rows [y, y + window)
    count = torch.zeros(1, 1, window, width, device=image.device)
    for i, y in enumerate(ys):
        if i:
            for t in (scores, count):
                _drop_rows(t, y - ys[i - 1])
        for x in xs:
            out = model(_as_unit_range(padded[:, :, y:y + window, x:x + window]))["seg"].float()
            rows, cols = out.shape[-2:]
            scores[:, :, :rows, x:x + cols] += out.softmax(dim=1) if softmax else out
            count[:, :, :rows, x:x + cols] += 1
        done = (ys[i + 1] if i + 1 < len(ys) else height) - y  # rows no later window reaches
        decided = scores[:, :, :done]
        if average:
            decided.div_(count[:, :, :done])  # in place: these rows are dropped next
        classes[:, y:y + done] = decided.argmax(dim=1).to(dtype)
    return classes[:, :h, :w]


def _as_unit_range(window: torch.Tensor) -> torch.Tensor:
    return window.float() / PIXEL_MAX if window.dtype == torch.uint8 else window


def _drop_rows(t: torch.Tensor, n: int) -> None:
    """Move ``t``'s rows (dim 2) up by ``n`` in place, zeros coming in at the bottom: no second
    accumulator-sized tensor, only a copy of the rows kept."""
    kept = t.shape[2] - n
    if kept > 0:
        t[:, :, :kept] = t[:, :, n:].clone()
    t[:, :, max(kept, 0):] = 0


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
            stride: int, protocol: SlidingProtocol = "border_aligned", size_multiple: int | None = None,
            dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Class map (B, H, W) for images in [0, 1]."""
    if mode == "sliding":
        return sliding_window_classes(model, image, num_classes=num_classes, window=window, stride=stride,
                                      protocol=protocol, dtype=dtype)
    return whole_image_logits(model, image, size_multiple=size_multiple).argmax(dim=1).to(dtype)


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
