"""`fastforec bench --what kernels [--crop S] [--batches N] [--threads T] [--json OUT]`.

Each fused kernel of the current device (Triton on CUDA, the chunked PyTorch path on the CPU)
against the naive PyTorch composition (``fastforec.losses.*_reference``), side by side in one
process: median (and min) time over interleaved repeats, peak extra memory, and on a GPU the achieved
bandwidth against the device's peak. The losses are timed forward + backward, because the fused
versions compute their gradient in the forward pass.

Peak memory is what the call allocates on top of what existed before it: on CUDA from the
caching allocator's statistics, on the CPU from the profiler's allocation trace (the CPU
allocator reports every allocation to it when ``profile_memory`` is on).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.table import Table

import fastforec_kernels as kernels
from fastforec.atomic import atomic_write_json
from fastforec.bench.timing import synchronize
from fastforec.losses import masked_mse_reference, pseudo_label_ce_reference, pseudo_label_reference
from fastforec.terminal import output_console
from fastforec_kernels._autograd import gradient_in_backward

# The benchmark shape: B=8, VOC's 21 classes; 512 is the paper's crop.
BATCH = 8
CLASSES = 21
DEFAULT_SIZES = (256, 512)
# Repeats per contender when --batches is not given: at least DEFAULT_REPEATS, more for
# millisecond kernels so each contender is timed for about TARGET_SECONDS (their medians are
# otherwise at the mercy of a few scheduler time slices on a shared machine).
DEFAULT_REPEATS = 7
TARGET_SECONDS = 1.0
MAX_REPEATS = 200
DTYPES = (torch.float32, torch.bfloat16)
CONF_THRESH = 0.95
VALID_FRACTION = 0.9
FG_CLASSES = tuple(range(1, CLASSES))
LOGIT_SCALE = 3.0  # spreads the softmax like a half-trained teacher's
SEED = 0
# Targets of issue #5, for the losses (pseudo_label has none).
TARGETED = ("pseudo_label_ce", "masked_mse")
CPU_MIN_SPEEDUP = 1.5
CPU_MAX_PEAK_RATIO = 0.5
GPU_MIN_BANDWIDTH_FRACTION = 0.7
INDEX_BYTES = 8  # int64 labels
MAP_BYTES = 1  # bool maps
CONF_BYTES = 4  # fp32 confidence
RGB = 3

Call = Callable[[], object]


@dataclass
class Case:
    """One (kernel, size, dtype) comparison: callables plus the bytes the fused version moves."""

    kernel: str
    size: int
    dtype: str
    fused: Call
    naive: Call
    fused_bytes: int
    # Run before every measured call, outside the measurement: drops the previous .grad so that
    # neither its free nor its reuse is counted.
    reset: Call = lambda: None


@dataclass
class Result:
    kernel: str
    size: int
    dtype: str
    fused_ms: float
    naive_ms: float
    speedup: float
    fused_min_ms: float
    naive_min_ms: float
    repeats: int
    fused_peak_bytes: int
    naive_peak_bytes: int
    peak_ratio: float
    fused_gbps: float | None = None
    bandwidth_fraction: float | None = None
    meets_target: bool | None = None
    times_ms: dict[str, list[float]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Bytes per call of the fused kernels (the GPU design model; docs/benchmarks.md)


def pseudo_label_bytes(*, pixels: int, classes: int, elem: int) -> int:
    """Read C logits; write label, conf and fg."""
    return pixels * (classes * elem + INDEX_BYTES + CONF_BYTES + MAP_BYTES)


def pseudo_label_ce_bytes(*, pixels: int, classes: int, elem: int, deferred: bool) -> int:
    """``deferred`` (CUDA, fp16; kernels/_autograd.py): forward reads C logits + label, conf,
    valid; backward reads them again and writes the C-channel gradient. Otherwise forward reads
    them and writes the gradient, and backward reads and writes the gradient once more to scale
    it by the incoming gradient."""
    inputs = pixels * (classes * elem + INDEX_BYTES + CONF_BYTES + MAP_BYTES)
    gradient = pixels * classes * elem
    return 2 * inputs + gradient if deferred else inputs + 3 * gradient


def masked_mse_bytes(*, pixels: int, elem: int, deferred: bool) -> int:
    """Reads rec, image (3 channels each), fg, mask and writes the 3-channel gradient, with the
    same two schedules as :func:`pseudo_label_ce_bytes`."""
    inputs = pixels * (2 * RGB * elem + 2 * MAP_BYTES)
    gradient = pixels * RGB * elem
    return 2 * inputs + gradient if deferred else inputs + 3 * gradient


# ---------------------------------------------------------------------------------------------
# Cases


def _backward(loss_fn: Callable[[], torch.Tensor]) -> Call:
    def run() -> None:
        loss_fn().backward()
    return run


def _clear_grad(*leaves: torch.Tensor) -> Call:
    def run() -> None:
        for leaf in leaves:
            leaf.grad = None
    return run


def build_cases(*, size: int, dtype: torch.dtype, device: torch.device, backend: str) -> list[Case]:
    gen = torch.Generator(device="cpu").manual_seed(SEED)
    shape = (BATCH, CLASSES, size, size)
    pixels = BATCH * size * size
    elem = torch.empty((), dtype=dtype).element_size()
    name = str(dtype).removeprefix("torch.")

    def rand(*s: int) -> torch.Tensor:
        return torch.rand(s, generator=gen).to(device)

    teacher = (torch.randn(shape, generator=gen) * LOGIT_SCALE).to(device=device, dtype=dtype)
    student = (torch.randn(shape, generator=gen) * LOGIT_SCALE).to(device=device, dtype=dtype).requires_grad_()
    deferred = gradient_in_backward(student)  # when the losses write their gradient
    label, conf, _ = pseudo_label_reference(teacher)
    valid = rand(BATCH, size, size) < VALID_FRACTION
    rec = rand(BATCH, RGB, size, size).to(dtype).requires_grad_()
    image = rand(BATCH, RGB, size, size).to(dtype)
    fg = rand(BATCH, size, size) < 0.5
    mask = valid & (rand(BATCH, size, size) < VALID_FRACTION)
    fg_classes = list(FG_CLASSES)
    return [
        Case("pseudo_label", size, name,
             fused=lambda: kernels.pseudo_label(teacher, fg_classes, backend=backend),
             naive=lambda: pseudo_label_reference(teacher, fg_classes),
             fused_bytes=pseudo_label_bytes(pixels=pixels, classes=CLASSES, elem=elem)),
        Case("pseudo_label_ce", size, name,
             fused=_backward(lambda: kernels.pseudo_label_ce(student, label, conf, valid, CONF_THRESH,
                                                             backend=backend)),
             naive=_backward(lambda: pseudo_label_ce_reference(student, label, conf, valid, CONF_THRESH)),
             fused_bytes=pseudo_label_ce_bytes(pixels=pixels, classes=CLASSES, elem=elem, deferred=deferred),
             reset=_clear_grad(student)),
        Case("masked_mse", size, name,
             fused=_backward(lambda: kernels.masked_mse(rec, image, fg, mask, backend=backend)),
             naive=_backward(lambda: masked_mse_reference(rec, image, fg, mask)),
             fused_bytes=masked_mse_bytes(pixels=pixels, elem=elem, deferred=deferred),
             reset=_clear_grad(rec)),
    ]


# ---------------------------------------------------------------------------------------------
# Measurements


def time_interleaved(calls: dict[str, Call], *, repeats: int, device: torch.device,
                     reset: Call = lambda: None) -> dict[str, list[float]]:
    """Milliseconds per call. Contenders alternate within each repeat so that a slow phase of a
    shared machine hits all of them, and the ratio stays meaningful."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            reset()
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def cpu_peak_bytes(call: Call) -> int:
    """Peak bytes allocated by ``call`` above the level at its start, from the profiler trace.

    Each allocation event carries the allocator's running "Total Allocated" (counted since the
    first profiled allocation of the process, so not 0 at the start of this trace): the peak
    extra memory is its maximum minus its value before the first event, temporaries freed
    inside an op included.
    """
    with tempfile.TemporaryDirectory() as tmp:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0),
                    key=lambda e: e["ts"])
    if not memory:
        return 0
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in memory) - start)


def cuda_peak_bytes(call: Call, device: torch.device) -> int:
    synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_bytes(call: Call, device: torch.device, reset: Call = lambda: None) -> int:
    reset()
    return cuda_peak_bytes(call, device) if device.type == "cuda" else cpu_peak_bytes(call)


def device_peak_bandwidth(device: torch.device) -> float | None:
    """Bytes/s from the memory clock and bus width (double data rate), when torch exposes them."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8


def adaptive_repeats(seconds_per_call: float) -> int:
    return min(MAX_REPEATS, max(DEFAULT_REPEATS, math.ceil(TARGET_SECONDS / max(seconds_per_call, 1e-6))))


def measure(case: Case, *, repeats: int | None, device: torch.device) -> Result:
    """``repeats`` None: chosen from the warm-up time (adaptive_repeats)."""
    calls = {"fused": case.fused, "naive": case.naive}
    # Warm-up (Triton compilation, allocator, first-touch pages), which also sizes the repeats.
    warm = time_interleaved(calls, repeats=1, device=device, reset=case.reset)
    if repeats is None:
        repeats = adaptive_repeats(max(t[0] for t in warm.values()) * 1e-3)
    peaks = {name: peak_bytes(call, device, case.reset) for name, call in calls.items()}
    times = time_interleaved(calls, repeats=repeats, device=device, reset=case.reset)
    fused_ms, naive_ms = statistics.median(times["fused"]), statistics.median(times["naive"])
    result = Result(kernel=case.kernel, size=case.size, dtype=case.dtype,
                    fused_ms=round(fused_ms, 3), naive_ms=round(naive_ms, 3),
                    speedup=round(naive_ms / fused_ms, 3),
                    fused_min_ms=round(min(times["fused"]), 3), naive_min_ms=round(min(times["naive"]), 3),
                    repeats=repeats,
                    fused_peak_bytes=peaks["fused"], naive_peak_bytes=peaks["naive"],
                    peak_ratio=round(peaks["fused"] / max(peaks["naive"], 1), 3),
                    times_ms={k: [round(t, 3) for t in v] for k, v in times.items()})
    peak_bw = device_peak_bandwidth(device)
    if device.type == "cuda":
        result.fused_gbps = round(case.fused_bytes / (fused_ms * 1e-3) / 1e9, 1)
        if peak_bw:
            result.bandwidth_fraction = round(case.fused_bytes / (fused_ms * 1e-3) / peak_bw, 3)
    result.meets_target = _meets_target(result, device)
    return result


def _meets_target(result: Result, device: torch.device) -> bool | None:
    if result.kernel not in TARGETED:
        return None
    if device.type == "cuda":
        return None if result.bandwidth_fraction is None else result.bandwidth_fraction >= GPU_MIN_BANDWIDTH_FRACTION
    return result.speedup >= CPU_MIN_SPEEDUP and result.peak_ratio <= CPU_MAX_PEAK_RATIO


# ---------------------------------------------------------------------------------------------
# Report


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: above the core count, 2-thread CPU timings are unreliable
    (docs/benchmarks.md, fused kernels), so the report records them next to the numbers."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def print_table(results: list[Result], *, device: torch.device, backend: str) -> None:
    table = Table(title=f"kernels: fused ({backend}) vs naive PyTorch, B={BATCH} C={CLASSES}, {device.type}")
    for col in ("kernel", "size", "dtype", "fused ms", "naive ms", "speedup", "fused MiB", "naive MiB",
                "mem ratio", "GB/s", "target"):
        table.add_column(col, justify="left" if col in ("kernel", "dtype") else "right")
    verdict = {None: "-", True: "ok", False: "MISSED"}
    for r in results:
        table.add_row(r.kernel, str(r.size), r.dtype, f"{r.fused_ms:.2f}", f"{r.naive_ms:.2f}", f"{r.speedup:.2f}x",
                      _mib(r.fused_peak_bytes), _mib(r.naive_peak_bytes), f"{r.peak_ratio:.2f}",
                      "-" if r.fused_gbps is None else f"{r.fused_gbps:.0f}", verdict[r.meets_target])
    console = output_console()
    console.print(table)
    load, cpus = load_average(), os.cpu_count() or 1
    if device.type == "cpu" and load is not None and load[0] > cpus and torch.get_num_threads() > 1:
        console.print(f"load average {load[0]:.1f} > {cpus} CPUs: multi-threaded timings are distorted by "
                      "oversubscription; --threads 1 gives stable ratios")


def report(results: list[Result], skipped: list[dict[str, object]], *, device: torch.device, backend: str,
           repeats: int | None) -> dict[str, object]:
    """JSON document: per kernel the headline run (first size, fp32), plus every run."""
    headline: dict[str, dict[str, object]] = {}
    for r in results:
        headline.setdefault(r.kernel, {k: v for k, v in asdict(r).items() if k != "times_ms"})
    return {"benchmark": "kernels", "device": device.type, "fused_backend": backend,
            "threads": torch.get_num_threads(), "load_average": load_average(), "cpus": os.cpu_count(),
            "batch": BATCH, "classes": CLASSES, "repeats": "adaptive" if repeats is None else repeats,
            "targets": {"cpu_min_speedup": CPU_MIN_SPEEDUP, "cpu_max_peak_ratio": CPU_MAX_PEAK_RATIO,
                        "gpu_min_bandwidth_fraction": GPU_MIN_BANDWIDTH_FRACTION, "kernels": list(TARGETED)},
            "kernels": headline, "runs": [asdict(r) for r in results], "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# Entry point


def _is_oom(err: RuntimeError) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def run(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The fused implementation "of the current device", never the CPU interpreter.
    backend = "triton" if device.type == "cuda" else "torch"
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    crop, batches = getattr(args, "crop", None), getattr(args, "batches", None)
    sizes = DEFAULT_SIZES if crop is None else (crop,)
    if (batches is not None and batches < 1) or min(sizes) < 1:
        print(f"bench kernels: --batches (timed repeats) and --crop must be >= 1, got --batches {batches} "
              f"and --crop {crop}")
        return 2
    results: list[Result] = []
    skipped: list[dict[str, object]] = []
    for size in sizes:
        for dtype in DTYPES:
            try:
                cases = build_cases(size=size, dtype=dtype, device=device, backend=backend)
                results.extend(measure(case, repeats=batches, device=device) for case in cases)
            except RuntimeError as err:
                if not _is_oom(err):
                    raise
                # "where memory allows": record the size as skipped and go on.
                skipped.append({"size": size, "dtype": str(dtype), "reason": str(err).splitlines()[0]})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print_table(results, device=device, backend=backend)
    doc = report(results, skipped, device=device, backend=backend, repeats=batches)
    if getattr(args, "json_out", None):
        atomic_write_json(args.json_out, doc)
    return 0
