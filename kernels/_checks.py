"""Input validation shared by both backends.

The kernels index memory with the shapes and strides they are given, so a shape mismatch would
read the wrong pixels silently instead of failing: every public entry point checks first and
names the argument and what it expected.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
RGB_CHANNELS = 3


def _fail(name: str, what: str, got: str) -> None:
    raise ValueError(f"kernels: {name} must be {what}, got {got}")


def check_float_nchw(name: str, t: torch.Tensor, *, channels: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(name, "a torch.Tensor", type(t).__name__)
    if t.dim() != 4:
        _fail(name, "4-D (B, C, H, W)", f"shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        _fail(name, "float32, bfloat16 or float16", str(t.dtype))
    if channels is not None and t.shape[1] != channels:
        _fail(name, f"(B, {channels}, H, W)", f"shape {tuple(t.shape)}")
    if t.numel() == 0:
        _fail(name, "non-empty", f"shape {tuple(t.shape)}")


def check_pixel_map(name: str, t: torch.Tensor, *, like: torch.Tensor, dtypes: Sequence[torch.dtype],
                    like_name: str) -> None:
    """``t`` is a (B, H, W) map aligned with the (B, C, H, W) tensor ``like``."""
    if not isinstance(t, torch.Tensor):
        _fail(name, "a torch.Tensor", type(t).__name__)
    expected = (like.shape[0], like.shape[2], like.shape[3])
    if tuple(t.shape) != expected:
        _fail(name, f"shape {expected} to match {like_name} {tuple(like.shape)}", f"shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        _fail(name, " or ".join(str(d) for d in dtypes), str(t.dtype))
    if t.device != like.device:
        _fail(name, f"on {like.device} like {like_name}", str(t.device))


def check_labels_in_range(label: torch.Tensor, num_classes: int) -> None:
    """Labels index the logits; out-of-range values would read another pixel's memory.

    Checked on the CPU only: on CUDA the check costs a host sync per step, and the Triton kernel
    masks its loads so a bad label cannot read out of bounds there (it matches no class).
    """
    if label.is_cuda:
        return
    lo, hi = torch.aminmax(label)
    if int(lo) < 0 or int(hi) >= num_classes:
        raise ValueError(f"kernels: label values must be in [0, {num_classes - 1}] (the logits have "
                         f"{num_classes} classes), got values in [{int(lo)}, {int(hi)}]")


def fg_lookup_table(fg_classes: Sequence[int] | torch.Tensor | None, num_classes: int,
                    device: torch.device) -> torch.Tensor | None:
    """Bool table ``lut[c]`` = class c is foreground, for c in [0, num_classes).

    A table lookup replaces ``isin`` (one gather instead of a search per pixel); classes beyond
    the logits' channel count can never be predicted, so they are dropped. The table is made once
    per (classes, device): a host-to-device copy at every call would block the step.
    """
    if fg_classes is None:
        return None
    ids = fg_classes.tolist() if isinstance(fg_classes, torch.Tensor) else list(fg_classes)
    for c in ids:
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            _fail("fg_classes", "a sequence of class ids >= 0", repr(ids))
    return _lookup_table(tuple(ids), num_classes, torch.device(device))


@functools.lru_cache(maxsize=64)
def _lookup_table(ids: tuple[int, ...], num_classes: int, device: torch.device) -> torch.Tensor:
    lut = torch.zeros(num_classes, dtype=torch.bool)
    lut[[c for c in ids if c < num_classes]] = True
    return lut.to(device)
