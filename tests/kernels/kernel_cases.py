"""Inputs and tolerances shared by the kernel tests (small shapes: the interpreter is slow)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import pytest
import torch

# The Triton backend runs here under TRITON_INTERPRET=1 (conftest.py), which needs the triton
# package; without it those cases skip and the PyTorch backend is still tested.
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="the triton package is not installed: the Triton "
                                                         "kernels cannot run (the torch backend is tested)")
BACKENDS = (pytest.param("triton", marks=needs_triton), "torch")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LOGIT_SCALE = 3.0


@dataclass(frozen=True)
class Shape:
    """(B, C, H, W) plus layout. H*W is never a multiple of the Triton pixel block."""

    batch: int
    classes: int
    height: int
    width: int
    channels_last: bool

    def __str__(self) -> str:
        layout = "nhwc" if self.channels_last else "nchw"
        return f"B{self.batch}C{self.classes}_{self.height}x{self.width}_{layout}"


# C = 19 (Cityscapes), 21 (VOC), 5 and 33 (not powers of two, 33 just above one); batch 1 and 3.
SHAPES = (
    Shape(1, 19, 13, 17, False),
    Shape(3, 21, 9, 31, True),
    Shape(3, 5, 11, 7, False),
    Shape(1, 33, 6, 23, True),
)


def layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t.contiguous()


def logits(shape: Shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((shape.batch, shape.classes, shape.height, shape.width), generator=gen) * LOGIT_SCALE
    return layout(x.to(dtype), shape.channels_last)


def pixel_rand(shape: Shape, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((shape.batch, shape.height, shape.width), generator=gen)


def grad_tol(dtype: torch.dtype) -> dict[str, float]:
    # Both sides compute in fp32; a half-precision gradient then differs by its rounding (and
    # the rounding of the grad_output scaling), i.e. about 2 ulp (bf16: 2**-7, fp16: 2**-10).
    if dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-7}
    return {"rtol": 1.6e-2, "atol": 1e-5} if dtype == torch.bfloat16 else {"rtol": 2e-3, "atol": 1e-6}


LOSS_TOL = {"rtol": 1e-5, "atol": 1e-7}


def force_chunk_elements(monkeypatch, elements: int) -> None:
    """Make the torch backend cut every call into chunks of ``elements`` values."""
    from fastforec_kernels import _chunked

    monkeypatch.setattr(_chunked, "MIN_CHUNK_ELEMENTS", elements)
    monkeypatch.setattr(_chunked, "CHUNKS_PER_CALL", 2**62)


def loss_and_grad(fn, x0: torch.Tensor, *rest, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d(scale * loss)/d x0) of ``fn(x0, *rest)``, on a fresh leaf copy of ``x0``."""
    x = x0.detach().clone().requires_grad_()
    loss = fn(x, *rest)
    (loss * scale).backward()
    return loss.detach(), x.grad
