"""Timing on the device: waiting for it (``synchronize``, the benchmarks' one copy), the median
time of a call (``time_ms``), and timed windows of consecutive training steps (``run_steps``)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fastforec.bench.harness import Batch

CPU_REPEATS = 3  # wall-clock runs of time_ms on the CPU


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has finished its queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, *, grad_to_none: list | None = None) -> float:
    """Median milliseconds of ``fn``: CUDA events through ``triton.testing.do_bench`` on a GPU,
    the median of a few wall-clock runs on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, grad_to_none=grad_to_none, return_mode="median"))
    times = []
    for _ in range(CPU_REPEATS):
        for t in grad_to_none or []:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@dataclass
class Window:
    """One timed run of consecutive steps."""

    steps: int
    samples: int
    seconds: float
    wait_seconds: float  # inside the feed (waiting for the data pipeline)
    skipped: int = 0  # non-finite losses: the step was dropped by the trainer

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def wait_fraction(self) -> float:
        return self.wait_seconds / self.seconds


def run_steps(trainer: Any, feed: Callable[[], Batch], steps: int) -> Window:
    """``steps`` training steps fed by ``feed``; the clock stops after the device is idle."""
    device = trainer.device
    skipped = 0
    wait = 0.0
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        labeled, unlabeled = feed()
        wait += time.perf_counter() - t0
        if not trainer.train_step(labeled, unlabeled):
            skipped += 1
    synchronize(device)
    seconds = time.perf_counter() - start
    return Window(steps=steps, samples=steps * trainer.cfg.data.batch_size, seconds=seconds, wait_seconds=wait,
                  skipped=skipped)


def median_rate(windows: list[Window]) -> float:
    return statistics.median(w.samples_per_s for w in windows)
