"""Backend selection: which implementation runs a call.

``auto`` picks Triton when the tensors are on CUDA or when ``TRITON_INTERPRET`` is set (the
tests run the Triton kernels on the CPU that way), else the chunked PyTorch implementation.
The environment is read at call time, not at import time, so a test can turn the interpreter
on for its own directory without the rest of the suite inheriting it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")
INTERPRET_ENV = "TRITON_INTERPRET"
# The same spellings triton.knobs accepts for a true boolean environment variable.
_TRUTHY = frozenset({"1", "true", "on", "yes"})


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value in the environment right now."""
    return os.environ.get(INTERPRET_ENV, "").strip().lower() in _TRUTHY


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, tensor: torch.Tensor) -> Literal["triton", "torch"]:
    """The concrete backend for a call whose main input is ``tensor``.

    Raises ValueError for an unknown name and RuntimeError when Triton is forced where it
    cannot run (CPU tensors without the interpreter), naming the setting to change.
    """
    if backend not in BACKENDS:
        raise ValueError(f"kernels backend must be one of {', '.join(BACKENDS)}, got {backend!r} "
                         "(config key method.kernels)")
    triton_can_run = tensor.is_cuda or interpreter_requested()
    if backend == "auto":
        return "triton" if triton_can_run and triton_installed() else "torch"
    if backend == "torch":
        return "torch"
    if not triton_installed():
        raise RuntimeError("kernels backend 'triton' needs the triton package, which is not installed; "
                           "set method.kernels to 'torch' or 'auto'")
    if not triton_can_run:
        raise RuntimeError(f"kernels backend 'triton' got {tensor.device.type.upper()} tensors: Triton runs on "
                           f"CUDA, or on the CPU only with {INTERPRET_ENV}=1 in the environment before the "
                           "first Triton call; set method.kernels to 'torch' or 'auto' on this machine")
    return "triton"
