"""`fastforec bench --what step`: the full training step on tensors already in memory.

    fastforec bench --what step --config configs/cpu/synth_demo.json [--batches N] [--json OUT]
    torchrun --nproc_per_node 2 -m fastforec.cli bench --what step --config ...
    deepspeed --num_gpus 2 --no_local_rank --module fastforec.cli bench --what step --config ...
    fastforec bench --what step --config configs/forec/voc_classic_92.json --batches 0 --peak-tflops 989

One step = the method's forward passes (mean teacher: teacher forward on the weak views, student
forward and backward on [labeled ; strong]; FixMatch/UniMatch: student forward and backward on
[labeled ; weak] and on the strong view(s), see fastforec.methods), losses, optimizer step, EMA
update: ``Trainer.train_step`` itself, fed from a few real
batches taken from the DALI pipeline once and kept on the device, so the number is what the
model side of the trainer can do when data is free. Reported per rank and in total: samples/s,
FLOPs per sample (FlopCounterMode over one real step), achieved FLOP/s and MFU against the
device's peak (a large matmul in the step's compute dtype, or ``--peak-tflops``).

``--batches 0`` counts the FLOPs per sample of the config's model on the meta device without
data or timing (any crop and backbone, in a second), and with ``--peak-tflops`` projects
samples/s per device at a few MFU values: the paper-scale estimate in docs/benchmarks.md.

``--baseline`` (one process) adds the plain-PyTorch loop of fastforec.bench.baseline: the same
network, method and batches as the research repositories run them (fp32, ``torch.optim``, no
DeepSpeed, no fused losses, a Python EMA). Trainer and baseline alternate, one timed window each
per round, so that the machine's load hits both alike; ``ratio_vs_baseline`` is the ratio of their
median samples/s.

JSON keys: samples_per_s_per_device, samples_per_s_total, flops_per_sample,
achieved_flops_per_s_per_device, peak_flops_per_s_per_device, mfu, per_rank, plus settings; with
--baseline also baseline_samples_per_s, ratio_vs_baseline, precision, baseline_precision,
baseline_per_round_samples_per_s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from fastforec.atomic import atomic_write_json
from fastforec.bench.baseline import PRECISION as BASELINE_PRECISION
from fastforec.bench.baseline import PlainLoop
from fastforec.bench.flops import DEFAULT_NUM_CLASSES, GIGA, TERA, model_step_flops, step_flops
from fastforec.bench.harness import bench_trainer, cycle, memory_batches
from fastforec.bench.peak import PeakMeter, compute_dtype
from fastforec.bench.ranks import gather_metrics, per_rank_rows, run_identity, throughput_summary
from fastforec.bench.settings import FLOPS_ONLY, BenchError, BenchSettings, bench_config, bench_settings
from fastforec.bench.tables import model_label, print_rich
from fastforec.bench.timing import median_rate, run_steps
from fastforec.config import Config, ConfigError
from fastforec.data.manifest import Manifest, ManifestError
from fastforec.distributed import init_distributed
from fastforec.precision import precision_mode

PROJECTED_MFU = (0.3, 0.4, 0.5)  # MFU values the FLOPs-only mode projects throughput at


def measure_step(trainer: Any, settings: BenchSettings, dist: Any, *, baseline: bool = False) -> dict[str, Any]:
    """Time ``settings.rounds`` windows of ``settings.batches`` in-memory steps on this rank and
    gather every rank's numbers; ``baseline``: interleave the plain loop's windows, same batches."""
    batches = memory_batches(trainer.train_data, trainer.device)
    feed = cycle(batches)
    # With gradient accumulation a window holds whole optimizer steps, each starting on a boundary:
    # otherwise one window pays for an optimizer step and EMA update that the next does not.
    warmup, per_window = (whole_steps(n, trainer.accum) for n in (settings.warmup, settings.batches))
    plain, plain_feed, plain_windows = None, cycle(batches), []
    if baseline:
        plain = PlainLoop(trainer.cfg, num_classes=trainer.num_classes, fg_classes=trainer.fg_classes,
                          device=trainer.device, max_steps=trainer.total_steps, accum=trainer.accum)
        run_steps(plain, plain_feed, warmup)
    run_steps(trainer, feed, warmup)
    flops = step_flops(trainer, feed())
    run_steps(trainer, feed, trainer.accum - 1)  # back on an optimizer-step boundary
    peak = PeakMeter(settings, trainer.device, compute_dtype(trainer))
    windows = []
    for _ in range(settings.rounds):
        windows.append(run_steps(trainer, feed, per_window))
        peak.sample()
        if plain is not None:
            plain_windows.append(run_steps(plain, plain_feed, per_window))
    batch = trainer.cfg.data.batch_size
    rate = median_rate(windows)
    rows = per_rank_rows(gather_metrics({"samples_per_s": rate, "flops_per_sample": flops / batch,
                                         "peak_flops_per_s": peak.value,
                                         "skipped_steps": sum(w.skipped for w in windows)}, dist))
    return {"benchmark": "step", **run_identity(trainer.cfg, dist, trainer), **throughput_summary(rows),
            "step_seconds": batch / rate, "peak_source": peak.source, "batches_per_round": per_window,
            "gradient_accumulation_steps": trainer.accum, "rounds": settings.rounds, "warmup_steps": warmup,
            "per_round_samples_per_s": [w.samples_per_s for w in windows],
            "precision": precision_mode(trainer.ds_config), **_baseline_keys(rate, plain_windows)}


def whole_steps(micro_batches: int, accum: int) -> int:
    """``micro_batches`` rounded up to whole optimizer steps of ``accum`` micro-batches."""
    return -(-micro_batches // accum) * accum


def _baseline_keys(rate: float, plain_windows: list[Any]) -> dict[str, Any]:
    if not plain_windows:
        return {}
    plain = median_rate(plain_windows)
    return {"baseline_samples_per_s": plain, "ratio_vs_baseline": rate / plain,
            "baseline_precision": BASELINE_PRECISION,
            "baseline_per_round_samples_per_s": [w.samples_per_s for w in plain_windows],
            "baseline": "plain PyTorch loop (fastforec.bench.baseline): fp32, torch.optim, no DeepSpeed, "
                        "no fused losses, Python EMA"}


def step_table(result: dict[str, Any]) -> Any:
    table = Table(title=f"train step on in-memory batches: {model_label(result)}, "
                        f"{result['method']}, crop {result['crop']}, batch {result['batch_size_per_device']}/device, "
                        f"{result['dtype']}, {result['device']} x {result['world_size']} "
                        f"(median of {result['rounds']} rounds of {result['batches_per_round']} steps)")
    for col in ("rank", "samples/s", "ms/step", "GFLOP/sample", "TFLOP/s", "peak TFLOP/s", "MFU"):
        table.add_column(col, justify="right")
    batch = result["batch_size_per_device"]
    for r in result["per_rank"]:
        table.add_row(str(r["rank"]), f"{r['samples_per_s']:.2f}", f"{1e3 * batch / r['samples_per_s']:.0f}",
                      f"{r['flops_per_sample'] / GIGA:.1f}", f"{r['samples_per_s'] * r['flops_per_sample'] / TERA:.3f}",
                      f"{r['peak_flops_per_s'] / TERA:.3f}", f"{100 * r['mfu']:.1f}%")
    table.add_section()
    table.add_row("total", f"{result['samples_per_s_total']:.2f}", "", f"{result['flops_per_sample'] / GIGA:.1f}",
                  f"{result['achieved_flops_per_s_per_device'] * result['world_size'] / TERA:.3f}",
                  f"{result['peak_flops_per_s_per_device'] * result['world_size'] / TERA:.3f}",
                  f"{100 * result['mfu']:.1f}%")
    if "baseline_samples_per_s" in result:
        plain = result["baseline_samples_per_s"]
        table.add_section()
        table.add_row(f"plain loop ({result['baseline_precision']})", f"{plain:.2f}", f"{1e3 * batch / plain:.0f}",
                      "", f"{plain * result['flops_per_sample'] / TERA:.3f}", "",
                      f"{100 * plain * result['flops_per_sample'] / result['peak_flops_per_s_per_device']:.1f}%")
        table.add_row(f"[bold]fastforec ({result['precision']}) / plain", f"[bold]{result['ratio_vs_baseline']:.2f}x",
                      "", "", "", "", "")
    return table


# ---------------------------------------------------------------------------------------------
# FLOPs only (no data, no timing)


def _num_classes(cfg: Config) -> tuple[int, str]:
    if (Path(cfg.data.root) / "manifest.json").is_file():
        return Manifest.load(cfg.data.root).num_classes, "manifest"
    return DEFAULT_NUM_CLASSES, f"assumed (no manifest in '{cfg.data.root}')"


def flops_only(cfg: Config, settings: BenchSettings) -> dict[str, Any]:
    num_classes, source = _num_classes(cfg)
    flops = model_step_flops(cfg, num_classes=num_classes)
    batch = cfg.data.batch_size
    result: dict[str, Any] = {
        "benchmark": "step", "mode": "flops_only", "backbone": cfg.model.backbone,
        "output_stride": cfg.model.output_stride, "decoder_channels": cfg.model.decoder_channels,
        "method": cfg.method.label, "crop": cfg.data.crop_size,
        "batch_size_per_device": batch, "num_classes": num_classes, "num_classes_source": source,
        "flops_per_sample": flops["total"] / batch, "teacher_flops_per_sample": flops["teacher"] / batch,
        "student_flops_per_sample": flops["student"] / batch,
    }
    if settings.peak_tflops is not None:
        peak = settings.peak_tflops * TERA
        result["peak_flops_per_s_per_device"] = peak
        result["projected_samples_per_s_per_device"] = {f"{m:.2f}": m * peak / result["flops_per_sample"]
                                                        for m in PROJECTED_MFU}
    return result


def flops_table(result: dict[str, Any]) -> Any:
    table = Table(title=f"FLOPs per sample (1 labeled + 1 unlabeled image): {model_label(result)}, "
                        f"{result['method']}, crop {result['crop']}, "
                        f"{result['num_classes']} classes")
    table.add_column("part")
    table.add_column("GFLOP/sample", justify="right")
    table.add_row("teacher forward (weak view)", f"{result['teacher_flops_per_sample'] / GIGA:.1f}")
    table.add_row("student forward + backward", f"{result['student_flops_per_sample'] / GIGA:.1f}")
    table.add_section()
    table.add_row("[bold]total", f"[bold]{result['flops_per_sample'] / GIGA:.1f}")
    for mfu, rate in result.get("projected_samples_per_s_per_device", {}).items():
        table.add_row(f"samples/s per device at MFU {mfu} of {result['peak_flops_per_s_per_device'] / TERA:.0f} "
                      f"TFLOP/s", f"{rate:.1f}")
    return table


# ---------------------------------------------------------------------------------------------


def _finish(result: dict[str, Any], table: Any, args: argparse.Namespace) -> int:
    print_rich(table)
    if args.json_out:
        atomic_write_json(args.json_out, result)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = bench_settings(args)
        if settings.batches == FLOPS_ONLY:
            cfg = bench_config(args, what="step", need_data=False)
            result = flops_only(cfg, settings)
            return _finish(result, flops_table(result), args)
        cfg = bench_config(args, what="step")
    except (ConfigError, BenchError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dist = init_distributed(args.local_rank)
    baseline = getattr(args, "baseline", False)  # a Namespace built by hand may lack it
    if baseline and dist.world_size > 1:
        print("error: bench --what step --baseline compares one process with one process; run it without a "
              "launcher (the plain loop has no DDP)", file=sys.stderr)
        return 2
    with bench_trainer(cfg, dist) as trainer:
        result = measure_step(trainer, settings, dist, baseline=baseline)
    if not dist.is_main:
        return 0
    return _finish(result, step_table(result), args)
