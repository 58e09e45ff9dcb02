"""What a person watching a run sees: one line per log step, progress and estimates.

Rank 0 only. On a terminal a live bar stays at the bottom and the lines scroll above it; when
output goes to a file there is no bar and no control code, only the lines (rich's Console knows
which). Numbers keep three significant digits, so 0.0312 samples/s is not "0.0".

The estimate: seconds per optimizer step measured since the first step (the first one pays for
warm-up and compilation and is left out) times the steps left, plus the evaluations left times
the measured duration of one (estimated from the forward cost until the first one has run).
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fastforec.formats import count, duration, sig

ESTIMATE_AFTER_STEPS = 3  # the up-front estimate is printed once this many steps after the first are timed
DAYS_WARNING = 1.0  # runs estimated longer than this many days get a warning
EVAL_LINES = 10  # in a file, an evaluation prints this many progress lines
SECONDS_PER_DAY = 86400.0
LOSS_KEYS = ("loss_s", "loss_u", "loss_u_s1", "loss_u_s2", "loss_u_fp", "loss_rec")
SHORT = {"loss_s": "sup", "loss_u": "unsup", "loss_u_s1": "s1", "loss_u_s2": "s2", "loss_u_fp": "fp",
         "loss_rec": "aux"}


def memory(device: torch.device) -> str:
    """Peak memory of this process: the GPU's allocator, or the process's resident set."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f} GiB GPU"
    # ru_maxrss is in kB on Linux, in bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return f"{rss / 2 ** 30:.1f} GiB RSS"


def matrix_units(cpu_flags: list[str]) -> str:
    """What a CPU offers bf16 matrix products: AMX tiles (several times its fp32 rate), AVX-512
    bf16 dot products (less), or nothing (bf16 is then emulated: slower than fp32)."""
    if "amx_bf16" in cpu_flags:
        return "AMX-BF16"
    if "avx512_bf16" in cpu_flags:
        return "AVX512-BF16, no AMX"
    return "no bf16 units"


def run_header(*, name: str, method: str, backbone: str, precision: str, device: torch.device, ranks: int,
               zero_stage: int, steps: int, cpu: dict[str, Any] | None = None) -> str:
    """The run's first line: what trains, in which precision, on what. A CPU's line names its
    bf16 units, since whether a 16-bit block pays off on a CPU depends on them (docs/benchmarks.md)."""
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    elif cpu is not None:
        where = f"cpu ({cpu['model']}; {matrix_units(cpu['flags'])})"
    else:
        where = device.type
    return (f"run {name}: {method}, {backbone}, {precision} on {where}, {ranks} rank{'s' if ranks > 1 else ''}, "
            f"ZeRO stage {zero_stage}, {count(steps, 'step')}")


@dataclass
class Estimate:
    """Time left, from measured rates. ``sec_per_eval`` None: no evaluation timed yet (the
    evaluations are then left out of the total, and the text says so)."""

    sec_per_step: float
    steps_left: int
    evals_left: int
    sec_per_eval: float | None

    @property
    def train_seconds(self) -> float:
        return self.sec_per_step * self.steps_left

    @property
    def eval_seconds(self) -> float:
        return (self.sec_per_eval or 0.0) * self.evals_left

    @property
    def total_seconds(self) -> float:
        return self.train_seconds + self.eval_seconds

    def describe(self) -> str:
        if self.steps_left <= 0:  # a run of a few steps is over by the time its rate is measured
            text = f"no training steps left ({sig(self.sec_per_step)} s per step measured)"
            if self.evals_left <= 0:
                return text
            if self.sec_per_eval is None:
                return text + f", {count(self.evals_left, 'evaluation')} to run"
            return text + f", {count(self.evals_left, 'evaluation')} x {duration(self.sec_per_eval)} = " \
                          f"{duration(self.eval_seconds)}"
        text = f"{count(self.steps_left, 'step')} x {sig(self.sec_per_step)} s = {duration(self.train_seconds)} of " \
               f"training"
        if self.sec_per_eval is None:
            return text + f", plus {count(self.evals_left, 'evaluation')} (timed at the first one)"
        return text + f" + {count(self.evals_left, 'evaluation')} x {duration(self.sec_per_eval)} = " \
                      f"{duration(self.total_seconds)}"

    def warning(self, device: torch.device) -> str | None:
        """A plain warning when the run would take days (a GPU recipe on a CPU, typically)."""
        days = self.total_seconds / SECONDS_PER_DAY
        if days < DAYS_WARNING:
            return None
        where = "this CPU: the recipe is sized for GPUs (docs/reproduce.md)" if device.type == "cpu" else \
            f"this {device.type} device"
        return f"warning: this run needs about {sig(days)} days on {where}"


class StepClock:
    """Seconds per optimizer step, measured from the end of the first step."""

    def __init__(self, first_step: int):
        self.first_step = first_step
        self._t0: float | None = None
        self._step0 = first_step

    def tick(self, step: int) -> None:
        if self._t0 is None and step > self.first_step:
            self._t0, self._step0 = time.perf_counter(), step

    def sec_per_step(self, step: int) -> float | None:
        if self._t0 is None or step <= self._step0:
            return None
        return (time.perf_counter() - self._t0) / (step - self._step0)


class RunConsole:
    """The console of a training run (a no-op on other ranks than 0)."""

    def __init__(self, *, enabled: bool, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.active: _Training | None = None  # the training bar, paused while an evaluation shows its own

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def print(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def training(self, *, total: int, completed: int) -> "_Training":
        return _Training(self, total=total, completed=completed)

    def train_line(self, *, step: int, total: int, epoch: int, record: dict[str, Any], device: torch.device,
                   estimate: Estimate | None, next_eval_s: float | None) -> str:
        parts = [f"step {step}/{total}", f"epoch {epoch}"]
        if "loss" in record:
            terms = " ".join(f"{SHORT[k]} {sig(record[k])}" for k in LOSS_KEYS if k in record)
            parts.append(f"loss {sig(record['loss'])}" + (f" ({terms})" if terms else ""))
        parts.append(f"lr {record['lr']:.3g}")
        if "pl_coverage" in record:
            parts.append(f"pseudo-labels {100 * record['pl_coverage']:.0f}%")
        if record.get("sec_per_step"):
            parts.append(f"{sig(record['sec_per_step'])} s/step, {sig(record['samples_per_s'])} samples/s")
        parts.append(memory(device))
        if estimate is not None:
            eta = f"eta {duration(estimate.total_seconds)}"
            if next_eval_s is not None:
                eta += f" (next eval in {duration(next_eval_s)})"
            parts.append(eta)
        return " | ".join(parts)

    def evaluation(self, *, name: str, images: int) -> "_EvalProgress":
        return _EvalProgress(self, name=name, images=images)


class _Training:
    def __init__(self, owner: RunConsole, *, total: int, completed: int):
        self.owner = owner
        self.progress: Progress | None = None
        if owner.enabled and owner.interactive:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=owner.console,
                                     transient=True)
            self.task = self.progress.add_task("train", total=total, completed=completed, info="")

    def __enter__(self) -> "_Training":
        self.owner.active = self
        self.resume()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pause()
        self.owner.active = None

    def pause(self) -> None:
        if self.progress is not None:
            self.progress.stop()  # rich shows one live display at a time

    def resume(self) -> None:
        if self.progress is not None:
            self.progress.start()

    def update(self, completed: int, info: str = "") -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, info=info)


class _EvalProgress:
    """images done / total with a rate and an estimate: a live bar on a terminal, a few lines in a file."""

    def __init__(self, owner: RunConsole, *, name: str, images: int):
        self.owner, self.name, self.images = owner, name, max(1, images)
        self.done = 0
        self.start = time.perf_counter()
        self._next_line = 1
        self.progress: Progress | None = None
        if owner.enabled and owner.interactive:
            self.progress = Progress(TextColumn(f"[bold]eval {name}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), console=owner.console, transient=True)
            self.task = self.progress.add_task("eval", total=self.images, info="")

    def __enter__(self) -> "_EvalProgress":
        if self.progress is not None:
            if self.owner.active is not None:
                self.owner.active.pause()
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
            if self.owner.active is not None:
                self.owner.active.resume()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def info(self) -> str:
        rate = self.done / max(self.seconds, 1e-9)
        left = (self.images - self.done) / rate if rate > 0 else math.inf
        return f"{sig(rate)} images/s, eta {duration(left)}"

    def advance(self, n: int) -> None:
        self.done = min(self.images, self.done + n)
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, info=self.info())
        elif self.done >= self._next_line * self.images / EVAL_LINES and self.done < self.images:
            while self.done >= self._next_line * self.images / EVAL_LINES:
                self._next_line += 1
            self.owner.print(f"eval {self.name}: {self.done}/{self.images} images, {self.info()}")
