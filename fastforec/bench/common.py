"""Shared machinery of `fastforec bench --what step` and `--what e2e`.

Both benchmarks drive the real :class:`fastforec.trainer.Trainer` (DeepSpeed engine, EMA teacher,
losses, optimizer) built from a run config. A *sample* is one labeled image together with its
unlabeled partner: the unit of ``data.batch_size`` and of the paper's "batch 16". FLOPs are
counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, forward and
backward; elementwise work, the optimizer and the EMA count as zero), so MFU means *model* FLOP
utilisation.

Multi-rank (``deepspeed`` / ``torchrun``): every rank times its own steps (the ranks run in
lockstep because the gradient all-reduce is a collective), the per-rank numbers are gathered,
and rank 0 prints and writes them with the total.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastforec.config import Config, ConfigError, load_config
from fastforec.errors import UserError

DEFAULT_BATCHES = 10  # timed steps per round (and per contender for e2e)
DEFAULT_ROUNDS = 3
WARMUP_STEPS = 2  # first steps pay for allocator growth and oneDNN/cuDNN algorithm selection
MEMORY_BATCHES = 2  # distinct in-memory batches the step benchmark cycles through
FLOPS_ONLY = 0  # `--batches 0`: FLOPs per sample from the config alone (meta device, no data)
# The peak is the best of a few square matmuls: big enough to be compute-bound, small enough
# to take ~1 s on a 2-core CPU.
PEAK_MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}
PEAK_REPEATS = 5  # per sample; the peak is sampled again after every timed round (see PeakMeter)
DEFAULT_NUM_CLASSES = 21  # VOC; only used when counting FLOPs without a dataset
TERA = 1e12
GIGA = 1e9

Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]


class BenchError(UserError, ValueError):
    """Bad benchmark arguments: the message says what to change."""


# ---------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class BenchSettings:
    batches: int  # timed steps per round; FLOPS_ONLY = count FLOPs without running
    rounds: int
    warmup: int
    peak_tflops: float | None  # given by the user, else measured


def bench_settings(args: argparse.Namespace, *, rounds: int = DEFAULT_ROUNDS) -> BenchSettings:
    batches = DEFAULT_BATCHES if args.batches is None else args.batches
    if batches < 0:
        raise BenchError(f"--batches must be >= 0 (0 = count FLOPs only), got {batches}")
    peak = getattr(args, "peak_tflops", None)
    if peak is not None and not peak > 0:
        raise BenchError(f"--peak-tflops must be > 0, got {peak}")
    return BenchSettings(batches=batches, rounds=rounds, warmup=WARMUP_STEPS, peak_tflops=peak)


def bench_config(args: argparse.Namespace, *, what: str, need_data: bool = True) -> Config:
    """The run config with the benchmark's command-line overrides applied.

    ``method.warmup_epochs`` is forced to 0: a benchmark times the full semi-supervised step, not
    the supervised-only warm-up epochs.
    """
    if not args.config:
        raise ConfigError(f"bench --what {what} needs --config (a run config: model, method, batch size)")
    cfg = load_config(args.config, args.overrides)
    if args.data:
        cfg.data.root = args.data
    if args.crop:
        cfg.data.crop_size = args.crop
    if args.threads:
        cfg.data.num_threads = args.threads
    cfg.method.warmup_epochs = 0
    cfg.validate()
    if need_data:
        cfg.check_paths()
    return cfg


# ---------------------------------------------------------------------------------------------
# the trainer under test and its inputs


@contextlib.contextmanager
def bench_trainer(cfg: Config, dist: Any) -> Iterator[Any]:
    """A Trainer whose run directory is a throw-away temporary directory (nothing is logged or
    checkpointed: only ``train_step`` is called)."""
    from fastforec.trainer import Trainer

    # A DeepSpeed TensorBoard monitor block in the run config would make the engine write and
    # flush an event at every optimizer step; a benchmark of the step must not time that.
    cfg = dataclasses.replace(cfg, deepspeed={**cfg.deepspeed, "tensorboard": {"enabled": False}})
    with tempfile.TemporaryDirectory(prefix="fastforec-bench-") as tmp:
        trainer = Trainer(cfg, run_dir=Path(tmp), dist=dist)
        try:
            yield trainer
        finally:
            trainer.train_data.close()


def pipeline_batch(train_data: Any) -> Batch:
    """The next training batch of the DALI pipeline, whatever epoch it belongs to."""
    return train_data.next_batch(train_data.state_dict()["epoch"])


def _own(batch: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    # DALI's tensors are zero-copy views of its buffers: clone so the batch outlives them.
    return None if batch is None else {k: v.to(device).clone() for k, v in batch.items()}


def memory_batches(train_data: Any, device: torch.device, count: int = MEMORY_BATCHES) -> list[Batch]:
    """``count`` real batches from the pipeline, copied to the device once."""
    batches = []
    for _ in range(count):
        labeled, unlabeled = pipeline_batch(train_data)
        batches.append((_own(labeled, device), _own(unlabeled, device)))  # type: ignore[arg-type]
    return batches


def cycle(batches: list[Batch]) -> Callable[[], Batch]:
    position = {"i": 0}

    def next_batch() -> Batch:
        batch = batches[position["i"] % len(batches)]
        position["i"] += 1
        return batch
    return next_batch


# ---------------------------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


# ---------------------------------------------------------------------------------------------
# FLOPs


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn`` dispatches (a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def step_flops(trainer: Any, batch: Batch) -> int:
    """FLOPs of one real ``train_step``: teacher forward, student forward and backward, losses,
    optimizer, EMA (the last three are elementwise, 0 FLOPs in the counter's model)."""
    labeled, unlabeled = batch
    return count_flops(lambda: trainer.train_step(labeled, unlabeled))


def model_step_flops(cfg: Config, *, num_classes: int) -> dict[str, int]:
    """FLOPs of one training step of ``cfg``'s model, counted on the meta device (shapes only:
    nothing is allocated or computed, so a ResNet-101 at crop 712 takes a second).

    It mirrors ``fastforec.methods``: mean teacher: teacher forward on B weak views, student
    forward and backward on [B labeled ; B strong]; FixMatch/UniMatch: student forward and backward
    on [B labeled ; B weak] (with UniMatch's perturbed stream) and on the B (UniMatch: 2B) strong
    views; B labeled for ``supervised``. The input image needs no gradient, as in the trainer.
    """
    from fastforec.models import deeplabv3plus

    m = cfg.method
    b, crop = cfg.data.batch_size, cfg.data.crop_size
    semi = m.uses_unlabeled
    with torch.device("meta"):
        student = deeplabv3plus(backbone=cfg.model.backbone, num_classes=num_classes,
                                output_stride=cfg.model.output_stride, reconstruction=m.reconstruction,
                                decoder_channels=cfg.model.decoder_channels,
                                backbone_width=cfg.model.backbone_width)
        teacher = student.segmentation_copy().eval() if m.has_teacher else None
        x = torch.empty((2 * b if semi else b), 3, crop, crop)
        strong = torch.empty(m.strong_views * b, 3, crop, crop)
    teacher_flops = 0
    if teacher is not None:
        with torch.no_grad():
            teacher_flops = count_flops(lambda: teacher(x[:b]))

    def student_step() -> None:
        if not semi or m.has_teacher:
            out = student(x)
        else:  # self-training: [labeled ; weak] (+ perturbed stream), then the strong views
            fp = m.fp_dropout if m.base_name == "unimatch" else 0.0
            out = {**{f"a_{k}": v for k, v in student(x, fp_dropout=fp, fp_from=b).items()}, **student(strong)}
        sum(v.sum() for v in out.values()).backward()
    student_flops = count_flops(student_step)
    return {"teacher": teacher_flops, "student": student_flops, "total": teacher_flops + student_flops}


# ---------------------------------------------------------------------------------------------
# the device's peak


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


# ---------------------------------------------------------------------------------------------
# ranks


def gather_metrics(metrics: dict[str, float], dist: Any) -> list[dict[str, float]]:
    """This rank's named numbers, gathered from every rank in rank order (every rank must call
    it with the same keys; a no-op in a world of one)."""
    import torch.distributed as tdist

    if dist.world_size == 1 or not tdist.is_initialized():
        return [dict(metrics)]
    keys = list(metrics)
    local = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=dist.device)
    parts = [torch.empty_like(local) for _ in range(dist.world_size)]
    tdist.all_gather(parts, local)
    return [dict(zip(keys, p.tolist())) for p in parts]


@dataclass
class RankRow:
    rank: int
    samples_per_s: float
    flops_per_sample: float
    peak_flops_per_s: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def achieved_flops_per_s(self) -> float:
        return self.samples_per_s * self.flops_per_sample

    @property
    def mfu(self) -> float:
        return self.achieved_flops_per_s / self.peak_flops_per_s


def run_identity(cfg: Config, dist: Any, trainer: Any) -> dict[str, Any]:
    """Settings that make two benchmark JSON files comparable."""
    import os

    return {"device": trainer.device.type, "world_size": dist.world_size, "batch_size_per_device": cfg.data.batch_size,
            "crop": cfg.data.crop_size, "backbone": cfg.model.backbone, "output_stride": cfg.model.output_stride,
            "decoder_channels": cfg.model.decoder_channels, "method": cfg.method.label,
            "dtype": str(compute_dtype(trainer)).removeprefix("torch."),
            "zero_stage": int(trainer.ds_config.get("zero_optimization", {}).get("stage", 0)),
            "torch_threads": torch.get_num_threads(), "data_threads": cfg.data.num_threads,
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()), "data": cfg.data.root}


def model_label(result: dict[str, Any]) -> str:
    """e.g. "resnet18 OS16 decoder 64" for table titles."""
    return f"{result['backbone']} OS{result['output_stride']} decoder {result['decoder_channels']}"


def print_rich(renderable: Any) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a log file or pipe: keep the columns instead of wrapping at 80
        console = Console(width=160)
    console.print(renderable)


ROW_KEYS = ("samples_per_s", "flops_per_sample", "peak_flops_per_s")


def per_rank_rows(gathered: list[dict[str, float]]) -> list[RankRow]:
    """Rows from gathered metrics: the ROW_KEYS, anything else goes into ``extra``."""
    return [RankRow(rank=r, samples_per_s=m["samples_per_s"], flops_per_sample=m["flops_per_sample"],
                    peak_flops_per_s=m["peak_flops_per_s"], extra={k: v for k, v in m.items() if k not in ROW_KEYS})
            for r, m in enumerate(gathered)]


def throughput_summary(rows: list[RankRow]) -> dict[str, Any]:
    """The JSON keys every step/e2e result has: per device (mean over ranks) and in total."""
    n = len(rows)
    return {
        "samples_per_s_per_device": sum(r.samples_per_s for r in rows) / n,
        "samples_per_s_total": sum(r.samples_per_s for r in rows),
        "flops_per_sample": rows[0].flops_per_sample,
        "achieved_flops_per_s_per_device": sum(r.achieved_flops_per_s for r in rows) / n,
        "peak_flops_per_s_per_device": sum(r.peak_flops_per_s for r in rows) / n,
        "mfu": sum(r.mfu for r in rows) / n,
        "per_rank": [{"rank": r.rank, "samples_per_s": r.samples_per_s, "flops_per_sample": r.flops_per_sample,
                      "peak_flops_per_s": r.peak_flops_per_s, "mfu": r.mfu, **r.extra} for r in rows],
    }
