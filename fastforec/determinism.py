"""Deterministic kernels on the GPU, for runs that must repeat (or resume) to the bit there.

On the CPU every kernel this project runs is deterministic: a run repeats bit for bit on one
machine, and ``--resume`` reproduces the uninterrupted run (tested). On a GPU three things break
that by default, for speed:

- cuDNN's autotuner (``train.cudnn_benchmark``) may pick another convolution algorithm in
  another process, with another rounding;
- several backward kernels accumulate with atomics in a scheduling-dependent order: bilinear
  upsampling (the decoders' resizes), index/scatter adds, SDPA's backward on some backends;
- cuBLAS splits reductions over a workspace whose use is not fixed without
  ``CUBLAS_WORKSPACE_CONFIG``.

``train.deterministic=true`` turns the first and third off and asks PyTorch for deterministic
algorithms. PyTorch has none for some of the atomics' kernels (bilinear upsampling's backward on
CUDA among them): those keep running and PyTorch warns once per kernel (``warn_only``), naming
it, rather than stopping the run. So on a GPU a deterministic run repeats closely, not to the
bit, wherever such a warning appears.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

# cuBLAS: a fixed workspace split (the documented setting; ":16:8" uses less memory, runs slower)
CUBLAS_WORKSPACE = ":4096:8"


def configure_determinism(*, deterministic: bool, cudnn_benchmark: bool) -> None:
    """Set the process-wide switches for a run; call before the first CUDA kernel (cuBLAS reads
    its environment variable when it starts)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = cudnn_benchmark


@contextlib.contextmanager
def cudnn_autotuner_off() -> Iterator[None]:
    """cuDNN's autotuner off for a while: whole-image evaluation feeds images of many sizes, and
    the autotuner would time every algorithm again for each new shape (training crops are fixed)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved
