"""`fastforec bench --what data`: the DALI training pipeline vs an equal-work PIL/torchvision
DataLoader baseline vs DALI decode-only, side by side in one process on the same shards and
thread count.

A sample is what one training step takes per labeled + unlabeled pair, made the way the config's
method makes it (UniMatch: weak + two strong views); :func:`produces` says it per contender.
Contenders are measured in interleaved rounds (A B C A B C ...) so that load from other
processes on a shared machine hits all of them alike; each contender reports the median of its
rounds. Before a timed window the process first waits for the other contenders' background
prefetching to finish (they are then idle), and drains the batches this contender prefetched
untimed, so every timed batch is produced inside the window with the CPU to itself.

Besides wall-clock throughput, the CPU time (all threads of this process plus the DataLoader
worker processes) spent per sample is reported: on a shared machine it is much less sensitive
to other load than wall time, and ``cpu_ratio`` (baseline CPU per sample / DALI CPU per sample)
is what the throughput ratio is on an otherwise idle machine when both saturate the cores.
``<contender>_cores_busy`` (CPU seconds per wall second of the window) says how many of the cores it was given
a contender kept busy; for DALI the CPU is split by thread (``dali_thread_cores``: DALI's worker
pool, its executor threads, and Python/torch, which feed the pipeline and hand batches over; each
thread's nanosecond run time over the median round, never more than the process's total), which
shows where the graph waits when the pool is not saturated.

JSON keys: dali_samples_per_s, baseline_samples_per_s, ratio (= dali / baseline),
decode_only_samples_per_s, plus the settings and the per-round numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from rich.progress import Progress
from rich.table import Table

from fastforec.atomic import atomic_write_json
from fastforec.bench.datasets import SHARDS_SUBDIR, make_bench_dataset, synthetic_voc_shards
from fastforec.bench.reference_loader import reference_loader
from fastforec.config import ConfigError, load_config
from fastforec.data.loader import TrainData
from fastforec.data.manifest import Manifest, ManifestError
from fastforec.data.pipelines import build_decode_pipeline
from fastforec.data.shard_reader import SplitReader
from fastforec.errors import UserError, check_output_dir
from fastforec.methods import base_of
from fastforec.terminal import output_console

DEFAULT_BATCHES = 30  # timed batches per contender and round
ROUNDS = 5
WARMUP_BATCHES = 3
BENCH_SAMPLES = 512  # unlabeled samples generated when --data points to an empty directory
BENCH_LABELED, BENCH_VAL = 64, 8
BENCH_SIZE = (375, 500)  # (height, width) of a typical VOC image
SYNTHETIC = ("scenes", "textured")  # --synthetic: dataprep's VOC scenes, or photo-like textured JPEGs
DRAIN = 4  # batches a contender may have prefetched while another one was timed
SETTLE_POLL_S = 0.05  # the DataLoader workers count as idle once they use < 10 % CPU per poll
SETTLE_IDLE_CPU_S = 0.005
SETTLE_MAX_S = 3.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")  # the unit of /proc's CPU times


@dataclass(frozen=True)
class Settings:
    root: Path
    crop: int
    threads: int
    batch_size: int
    batches: int
    device: str  # DALI backend: "cpu", or "gpu" (decoding and augmentation on the GPU)
    synthetic: str  # what an empty root is filled with, one of SYNTHETIC
    strong_views: int  # per unlabeled image, as the config's method makes them (UniMatch: 2)
    method: str


def _settings(args: argparse.Namespace) -> tuple[Settings, Any]:
    if not args.config:
        raise ConfigError("bench --what data needs --config (a run config; its data section is used)")
    cfg = load_config(args.config, args.overrides)
    data = cfg.data
    if args.data:
        data.root = args.data
    if args.crop:
        data.crop_size = args.crop
    if args.threads:
        data.num_threads = args.threads
    data.validate("data")
    device = getattr(args, "device", None) or "cpu"
    if device == "gpu":
        if not torch.cuda.is_available():
            raise ConfigError("bench --what data --device gpu: no CUDA GPU here; use --device cpu")
    settings = Settings(root=Path(data.root), crop=data.crop_size, threads=data.num_threads,
                        batch_size=data.batch_size, batches=args.batches or DEFAULT_BATCHES, device=device,
                        synthetic=getattr(args, "synthetic", None) or SYNTHETIC[0],
                        strong_views=base_of(cfg.method).strong_views, method=cfg.method.label)
    return settings, data


def _manifest(root: Path, synthetic: str, console: Any) -> Any:
    """Shards at ``root`` (or ``root/shards``, where a generated scenes set lives); an empty or
    new ``root`` first gets VOC-sized synthetic shards of the kind ``synthetic`` names."""
    for candidate in (root, root / SHARDS_SUBDIR):
        if (candidate / "manifest.json").is_file():
            return Manifest.load(candidate)
    if root.exists() and any(root.iterdir()):
        raise FileNotFoundError(f"'{root}' has no manifest.json and is not empty; point --data at shards "
                                f"written by dataprep, or at an empty/new directory to generate some")
    check_output_dir(root, "--data")  # a clear message before any image is made
    height, width = BENCH_SIZE
    if synthetic == "textured":
        console.print(f"[yellow]no shards in '{root}': writing {BENCH_SAMPLES} photo-like textured "
                      f"{height}x{width} JPEGs")
        return make_bench_dataset(root, num_samples=BENCH_SAMPLES, height=height, width=width, seed=0)
    console.print(f"[yellow]no shards in '{root}': generating {BENCH_SAMPLES} VOC-sized "
                  f"({height}x{width}) JPEGs with dataprep")
    return Manifest.load(synthetic_voc_shards(root, num_train=BENCH_SAMPLES + BENCH_LABELED,
                                              num_labeled=BENCH_LABELED, num_val=BENCH_VAL, size=BENCH_SIZE,
                                              seed=0))


# ---------------------------------------------------------------------------------------------
# contenders: each is a zero-argument "give me the next batch" callable


# What one "sample" of the timed rounds is, for each contender: a training step's share of one
# labeled and one unlabeled image with everything the trainer receives for them.
def produces(strong_views: int) -> dict[str, str]:
    views = "weak + strong" if strong_views == 1 else f"weak + {strong_views} strong views"
    return {"dali": f"labeled image + label; unlabeled {views}, valid mask, {strong_views} CutMix box(es); "
                    "float32 RGB in [0, 1] (the model standardises on the device)",
            "baseline": "the same, as the peers' loaders make it: PIL + torchvision per sample, images standardised "
                        "(ImageNet mean/std) float32 on the CPU; a labeled and an unlabeled DataLoader",
            "decode_only": "unlabeled image decoded, nothing else"}


def _dali(manifest: Any, data: Any, device: str, strong_views: int) -> Callable[[], Any]:
    train = TrainData(manifest, data, rank=0, world_size=1, seed=0, with_unlabeled=True, device=device,
                      strong_views=strong_views)
    return train.next_batch


def _baseline(manifest: Any, data: Any, threads: int, strong_views: int) -> Callable[[], Any]:
    # the two loaders share the workers the DALI contender gets as threads
    workers = max(1, threads // 2)
    labeled: Iterator[Any] = iter(reference_loader(manifest, data, split="labeled", num_workers=workers,
                                                   normalize=True))
    unlabeled: Iterator[Any] = iter(reference_loader(manifest, data, split="unlabeled", num_workers=workers,
                                                     strong_views=strong_views, normalize=True))
    return lambda: (next(labeled), next(unlabeled))


def _decode_only(manifest: Any, data: Any, device: str) -> Callable[[], Any]:
    reader = SplitReader(manifest, "unlabeled", with_labels=False)
    order: deque[int] = deque()

    def source() -> list[np.ndarray]:
        if len(order) < data.batch_size:
            order.extend(range(len(reader)))
        return [reader.image_bytes(order.popleft()) for _ in range(data.batch_size)]

    pipe = build_decode_pipeline(source=source, device=device, batch_size=data.batch_size,
                                 num_threads=data.num_threads, prefetch=2)
    return lambda: pipe.run()


def _stat(path: Path) -> tuple[int, float] | None:
    """(parent pid, CPU seconds so far) from a /proc .../stat file, None if the process or thread
    ended meanwhile. The fields after the command name: ppid first, utime and stime at fixed positions."""
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def _children_cpu_seconds() -> float:
    """CPU time of this process's live descendants (the DataLoader workers, which a fork server
    starts: they are grandchildren), from /proc: rusage only counts children once they have exited."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        stat = _stat(path)
        if stat is not None:
            pid = int(path.parent.name)
            parent[pid], cpu[pid] = stat
    me, total = os.getpid(), 0.0
    for pid in cpu:
        p = parent.get(pid)
        while p is not None and p != me and p > 1:
            p = parent.get(p)
        if p == me:
            total += cpu[pid]
    return total


# DALI names its threads: "[DALI][TP<n>]Exec" (the worker pool that runs the operators per
# sample) and "[DALI] Executor" (scheduling); every other thread of this process is Python or torch.
THREAD_GROUPS = (("DALI worker pool", "[DALI][TP"), ("DALI executor", "[DALI]"))
PYTHON_THREADS = "Python + torch"


def _thread_seconds(task: Path) -> float | None:
    """CPU seconds of one thread: the scheduler's nanosecond run time (schedstat's first field),
    else /proc's clock ticks (10 ms units: too coarse for a window of a few batches)."""
    try:
        return int((task / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        stat = _stat(task / "stat")
        return None if stat is None else stat[1]


def _thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each live thread of this process: {tid: (thread group, seconds)},
    the group one of THREAD_GROUPS or PYTHON_THREADS (from /proc/self/task)."""
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        seconds = _thread_seconds(task)
        if seconds is not None:
            group = next((name for name, prefix in THREAD_GROUPS if comm.startswith(prefix)), PYTHON_THREADS)
            out[int(task.name)] = (group, seconds)
    return out


def _thread_cpu_by_group(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each thread group spent between two snapshots. A thread that ended in between
    is left out; one that started (or a reused tid whose count went down) counts from zero."""
    out = {name: 0.0 for name, _ in THREAD_GROUPS} | {PYTHON_THREADS: 0.0}
    for tid, (group, seconds) in after.items():
        start = before.get(tid, (group, 0.0))[1]
        out[group] += seconds - start if seconds >= start else seconds
    return out


THREAD_CLOCK = "schedstat" if Path("/proc/self/task", str(os.getpid()), "schedstat").exists() else "ticks"


def _settle() -> None:
    """Wait until the DataLoader workers stop prefetching (DALI's in-process prefetch of two
    batches is covered by the first poll interval)."""
    deadline = time.perf_counter() + SETTLE_MAX_S
    before = _children_cpu_seconds()
    while time.perf_counter() < deadline:
        time.sleep(SETTLE_POLL_S)
        now = _children_cpu_seconds()
        if now - before < SETTLE_IDLE_CPU_S:
            return
        before = now


@dataclass(frozen=True)
class Window:
    samples_per_s: float
    cpu_ms_per_sample: float
    cores_busy: float  # CPU seconds / wall seconds over the CPU readings' own span
    thread_cores: dict[str, float]  # cores kept busy per thread group of this process, over the same span


def _time(next_batch: Callable[[], Any], s: Settings) -> Window:
    _settle()
    for _ in range(DRAIN):
        next_batch()
    # The readings nest: the process's CPU (all threads, ns) is read outside the per-thread
    # snapshot at both ends, so the threads' sum can never exceed the process's figure (each count
    # only grows), and both are divided by the wall time of that outer span (which includes the
    # snapshots' own cost: a few ms, nothing against a window of 30 batches). Throughput uses the
    # inner span, the batches alone. The slow /proc scan of the DataLoader workers stays outside
    # both: DALI keeps prefetching while it runs.
    children = _children_cpu_seconds()
    outer = time.perf_counter()
    cpu = time.process_time()
    threads = _thread_cpu_seconds()
    start = time.perf_counter()
    for _ in range(s.batches):
        next_batch()
    if s.device == "gpu":  # GPU batches are handed over on the stream: wait for the last one
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    by_group = _thread_cpu_by_group(threads, _thread_cpu_seconds())
    cpu = time.process_time() - cpu
    outer = time.perf_counter() - outer
    cpu += _children_cpu_seconds() - children
    samples = s.batches * s.batch_size
    return Window(samples_per_s=samples / wall, cpu_ms_per_sample=1e3 * cpu / samples, cores_busy=cpu / outer,
                  thread_cores={k: v / outer for k, v in by_group.items()})


def _measure(contenders: dict[str, Callable[[], Any]], s: Settings, progress: Any) -> dict[str, list[Window]]:
    for name, next_batch in contenders.items():
        for _ in range(WARMUP_BATCHES):
            next_batch()
    windows: dict[str, list[Window]] = {name: [] for name in contenders}
    task = progress.add_task("timing", total=ROUNDS * len(contenders))
    for _ in range(ROUNDS):
        for name, next_batch in contenders.items():
            progress.update(task, description=f"timing {name}")
            windows[name].append(_time(next_batch, s))
            progress.advance(task)
    return windows


def _median_window(windows: list[Window]) -> Window:
    """The round whose cores busy is the (lower) median: a real round, not a mix of several."""
    return sorted(windows, key=lambda w: w.cores_busy)[(len(windows) - 1) // 2]


def _report(windows: dict[str, list[Window]], s: Settings, num_samples: int) -> dict[str, Any]:
    rate = {k: statistics.median(w.samples_per_s for w in v) for k, v in windows.items()}
    cpu = {k: statistics.median(w.cpu_ms_per_sample for w in v) for k, v in windows.items()}
    busy = {k: _median_window(v).cores_busy for k, v in windows.items()}
    return {
        "dali_samples_per_s": rate["dali"], "baseline_samples_per_s": rate["baseline"],
        "ratio": rate["dali"] / rate["baseline"], "decode_only_samples_per_s": rate["decode_only"],
        "dali_cpu_ms_per_sample": cpu["dali"], "baseline_cpu_ms_per_sample": cpu["baseline"],
        "decode_only_cpu_ms_per_sample": cpu["decode_only"], "cpu_ratio": cpu["baseline"] / cpu["dali"],
        **{f"{k}_cores_busy": v for k, v in busy.items()},
        # the split of one round (the median one), so that it adds up to that round's cores busy
        "dali_thread_cores": _median_window(windows["dali"]).thread_cores, "dali_thread_clock": THREAD_CLOCK,
        "crop": s.crop, "threads": s.threads, "batch_size": s.batch_size, "batches_per_round": s.batches,
        "rounds": ROUNDS, "data": str(s.root), "num_samples": num_samples,
        "per_round": {k: [round(w.samples_per_s, 1) for w in v] for k, v in windows.items()},
        "per_round_cpu_ms": {k: [round(w.cpu_ms_per_sample, 3) for w in v] for k, v in windows.items()},
        "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()), "device": s.device,
        "method": s.method, "strong_views": s.strong_views, "produces": produces(s.strong_views),
    }


def _print(result: dict[str, Any], console: Any) -> None:
    table = Table(title=f"data pipeline ({result['device']} DALI backend; the baseline is always CPU), "
                        f"{result['method']} recipe ({result['strong_views']} strong view(s)), crop {result['crop']}, "
                        f"batch {result['batch_size']}, {result['threads']} threads/workers (median of "
                        f"{result['rounds']} rounds); a sample = one labeled + one unlabeled image")
    table.add_column("contender")
    table.add_column("samples/s", justify="right")
    table.add_column("vs baseline", justify="right")
    table.add_column("CPU ms/sample", justify="right")
    table.add_column("CPU vs baseline", justify="right")
    table.add_column("cores busy", justify="right")
    base, base_cpu = result["baseline_samples_per_s"], result["baseline_cpu_ms_per_sample"]
    for label, key in (("DALI", "dali"), ("PIL DataLoader", "baseline"), ("DALI decode only", "decode_only")):
        rate, cpu = result[f"{key}_samples_per_s"], result[f"{key}_cpu_ms_per_sample"]
        table.add_row(label, f"{rate:.1f}", f"{rate / base:.2f}x", f"{cpu:.2f}", f"{base_cpu / cpu:.2f}x",
                      f"{result[f'{key}_cores_busy']:.2f}")
    console.print(table)
    split = ", ".join(f"{name} {cores:.2f}" for name, cores in result["dali_thread_cores"].items())
    console.print(f"DALI's cores busy by thread: {split} (of {result['threads']} DALI threads on "
                  f"{result['cpu_count']} CPUs)", soft_wrap=True, markup=False, highlight=False)
    for key, text in result["produces"].items():
        console.print(f"{key}: {text}", soft_wrap=True, markup=False, highlight=False)
    console.print(f"load average during the run: {', '.join(f'{x:.2f}' for x in result['load_average'])} "
                  f"on {result['cpu_count']} CPUs")


def run(args: argparse.Namespace) -> int:
    console = output_console(stderr=True)
    try:
        settings, data = _settings(args)
        manifest = _manifest(settings.root, settings.synthetic, console)
        num_samples = manifest.split("unlabeled").num_samples
        if num_samples < settings.batch_size:
            raise ManifestError(f"'{settings.root}' has {num_samples} unlabeled samples, fewer than one batch")
        per_round = settings.batches * settings.batch_size
        if per_round > num_samples:
            # the loaders wrap around: decoded bytes may then come from the page cache warmer than
            # a real epoch's, so say so rather than report it as a pass over new data
            console.print(f"note: a round takes {per_round} samples ({settings.batches} batches x "
                          f"{settings.batch_size}) from a split of {num_samples}: samples are recycled "
                          f"{per_round / num_samples:.1f} times per round; give --batches "
                          f"{max(1, num_samples // settings.batch_size)} or more data to avoid it",
                          markup=False, highlight=False, soft_wrap=True)
        contenders = {"dali": _dali(manifest, data, settings.device, settings.strong_views),
                      "baseline": _baseline(manifest, data, settings.threads, settings.strong_views),
                      "decode_only": _decode_only(manifest, data, settings.device)}
        with Progress(console=console, transient=True) as progress:
            result = _report(_measure(contenders, settings, progress), settings, num_samples)
    except (UserError, FileNotFoundError) as e:  # config, manifest, and a failed dataprep command
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print(result, output_console())
    if args.json_out:
        atomic_write_json(args.json_out, result)
    return 0
