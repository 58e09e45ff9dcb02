"""The device's peak FLOP/s, the denominator of MFU: given by the user or measured."""

from __future__ import annotations

import time
from typing import Any

import torch

from fastforec.bench.flops import TERA
from fastforec.bench.settings import BenchSettings
from fastforec.bench.timing import synchronize

# The peak is the best of a few square matmuls: big enough to be compute-bound, small enough
# to take ~1 s on a 2-core CPU.
PEAK_MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}
PEAK_REPEATS = 5  # per sample; the peak is sampled again after every timed round (see PeakMeter)


def compute_dtype(trainer: Any) -> torch.dtype:
    """The dtype the convolutions run in: the autocast dtype if any, else the weights' dtype."""
    ds = trainer.ds_config
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if ds.get("torch_autocast", {}).get("enabled"):
        return names[str(ds["torch_autocast"].get("dtype", "bfloat16"))]
    return trainer.input_dtype


def measure_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the best of a few large square matmuls in ``dtype`` (what the hardware gives a
    well-shaped GEMM: the denominator of MFU when the vendor's number is not given)."""
    n = PEAK_MATMUL_SIZE["cuda" if device.type == "cuda" else "cpu"]
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: library initialisation, first-touch pages
    best = float("inf")
    for _ in range(PEAK_REPEATS):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best


class PeakMeter:
    """The device's peak FLOP/s: ``--peak-tflops``, or the best matmul seen over the run.

    On a shared machine a single measurement can land in a busy moment and make MFU exceed 1, so
    the peak is sampled before the timed rounds and after each of them, and the best sample is
    kept: a peak is what the hardware can do, not what it did once.
    """

    def __init__(self, settings: BenchSettings, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.given = settings.peak_tflops
        n = PEAK_MATMUL_SIZE["cuda" if device.type == "cuda" else "cpu"]
        self.source = "--peak-tflops" if self.given is not None else f"measured (best {n}^2 matmul)"
        self.best = 0.0
        self.sample()

    def sample(self) -> None:
        if self.given is None:
            self.best = max(self.best, measure_peak_flops(self.device, self.dtype))

    @property
    def value(self) -> float:
        return self.given * TERA if self.given is not None else self.best
