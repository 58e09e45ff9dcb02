"""`fastforec bench --what e2e`: the training step fed by the real DALI pipeline from shards.

    fastforec bench --what e2e --config configs/cpu/synth_demo.json [--batches N] [--json OUT]
    torchrun --nproc_per_node 2 -m fastforec.cli bench --what e2e --config ...

Two contenders share one trainer and alternate in rounds (in-memory, pipeline, in-memory, ...),
so that load from other processes on a shared machine hits both alike:

* ``step``: ``train_step`` on batches already on the device (what `--what step` measures);
* ``e2e``: ``train_step`` on ``trainer.train_data.next_batch``, exactly as ``Trainer.fit`` does.

efficiency = e2e samples/s / step samples/s (1.0 = the pipeline hides completely behind the
model's compute); data-wait fraction = share of the e2e time spent inside ``next_batch``.

DALI prefetches ``PREFETCH_DEPTH`` batches; those it prepared while an in-memory round ran would
come for free, so each e2e round first consumes them untimed (training on them), and every
timed e2e batch is produced inside the timed window.

JSON keys: samples_per_s_per_device (= e2e), step_samples_per_s_per_device, efficiency,
data_wait_fraction, flops_per_sample, mfu (of the e2e rate), per_rank, plus settings.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from rich.table import Table

from fastforec.atomic import atomic_write_json
from fastforec.bench.flops import GIGA, TERA, step_flops
from fastforec.bench.harness import Batch, bench_trainer, cycle, memory_batches
from fastforec.bench.peak import PeakMeter, compute_dtype
from fastforec.bench.ranks import gather_metrics, per_rank_rows, run_identity, throughput_summary
from fastforec.bench.settings import FLOPS_ONLY, BenchError, BenchSettings, bench_config, bench_settings
from fastforec.bench.tables import model_label, print_rich
from fastforec.bench.timing import Window, median_rate, run_steps
from fastforec.config import ConfigError
from fastforec.data.loader import PREFETCH_DEPTH
from fastforec.data.manifest import ManifestError
from fastforec.distributed import init_distributed

EFFICIENCY_TARGET = 0.9  # issue #7: the pipeline and the trainer's own work hide behind compute
ROUNDS = 5  # two contenders whose ratio is the result: more rounds than `step` for a stable median


def _rounds(trainer: Any, settings: BenchSettings, *, in_memory: Callable[[], Batch],
            from_pipeline: Callable[[], Batch], peak: PeakMeter) -> tuple[list[Window], list[Window]]:
    step_windows, e2e_windows = [], []
    for _ in range(settings.rounds):
        step_windows.append(run_steps(trainer, in_memory, settings.batches))
        run_steps(trainer, from_pipeline, PREFETCH_DEPTH)  # drain what was prefetched meanwhile
        e2e_windows.append(run_steps(trainer, from_pipeline, settings.batches))
        peak.sample()
    return step_windows, e2e_windows


def measure_e2e(trainer: Any, settings: BenchSettings, dist: Any) -> dict[str, Any]:
    batch = trainer.cfg.data.batch_size
    in_memory = cycle(memory_batches(trainer.train_data, trainer.device))

    def from_pipeline() -> Batch:
        return trainer.train_data.next_batch()

    run_steps(trainer, in_memory, settings.warmup)
    run_steps(trainer, from_pipeline, settings.warmup)
    flops = step_flops(trainer, in_memory())
    peak = PeakMeter(settings, trainer.device, compute_dtype(trainer))
    step_windows, e2e_windows = _rounds(trainer, settings, in_memory=in_memory, from_pipeline=from_pipeline,
                                        peak=peak)
    e2e_rate, step_rate = median_rate(e2e_windows), median_rate(step_windows)
    wait = sum(w.wait_seconds for w in e2e_windows) / sum(w.seconds for w in e2e_windows)
    skipped = sum(w.skipped for w in step_windows + e2e_windows)
    rows = per_rank_rows(gather_metrics({"samples_per_s": e2e_rate, "flops_per_sample": flops / batch,
                                         "peak_flops_per_s": peak.value, "step_samples_per_s": step_rate,
                                         "data_wait_fraction": wait, "skipped_steps": skipped}, dist))
    for row in rows:
        row.extra["efficiency"] = row.samples_per_s / row.extra["step_samples_per_s"]
    summary = throughput_summary(rows)
    step_total = sum(row.extra["step_samples_per_s"] for row in rows)
    return {"benchmark": "e2e", **run_identity(trainer.cfg, dist, trainer), **summary,
            "e2e_samples_per_s_per_device": summary["samples_per_s_per_device"],
            "step_samples_per_s_per_device": step_total / len(rows),
            "efficiency": summary["samples_per_s_total"] / step_total,
            "efficiency_target": EFFICIENCY_TARGET,
            "data_wait_fraction": sum(row.extra["data_wait_fraction"] for row in rows) / len(rows),
            "peak_source": peak.source, "batches_per_round": settings.batches, "rounds": settings.rounds,
            "warmup_steps": settings.warmup,
            "per_round_samples_per_s": {"step": [w.samples_per_s for w in step_windows],
                                        "e2e": [w.samples_per_s for w in e2e_windows]}}


def e2e_table(result: dict[str, Any]) -> Any:
    table = Table(title=f"train step fed by the DALI pipeline vs in memory: {model_label(result)}, "
                        f"{result['method']}, crop {result['crop']}, batch "
                        f"{result['batch_size_per_device']}/device, {result['dtype']}, {result['device']} x "
                        f"{result['world_size']}, {result['data_threads']} DALI threads (median of "
                        f"{result['rounds']} interleaved rounds of {result['batches_per_round']} steps)")
    for col in ("rank", "step samples/s", "e2e samples/s", "efficiency", "data wait", "GFLOP/sample", "MFU (e2e)"):
        table.add_column(col, justify="right")
    for r in result["per_rank"]:
        table.add_row(str(r["rank"]), f"{r['step_samples_per_s']:.2f}", f"{r['samples_per_s']:.2f}",
                      f"{r['efficiency']:.3f}", f"{100 * r['data_wait_fraction']:.1f}%",
                      f"{r['flops_per_sample'] / GIGA:.1f}", f"{100 * r['mfu']:.1f}%")
    table.add_section()
    world = result["world_size"]
    table.add_row("total", f"{result['step_samples_per_s_per_device'] * world:.2f}",
                  f"{result['samples_per_s_total']:.2f}", f"[bold]{result['efficiency']:.3f}",
                  f"{100 * result['data_wait_fraction']:.1f}%", f"{result['flops_per_sample'] / GIGA:.1f}",
                  f"{100 * result['mfu']:.1f}% of {result['peak_flops_per_s_per_device'] / TERA:.3f} TFLOP/s")
    return table


def run(args: argparse.Namespace) -> int:
    try:
        settings = bench_settings(args, rounds=ROUNDS)
        if settings.batches == FLOPS_ONLY:
            raise BenchError("bench --what e2e needs --batches >= 1 (--batches 0 counts FLOPs only: use --what step)")
        cfg = bench_config(args, what="e2e")
    except (ConfigError, BenchError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dist = init_distributed(args.local_rank)
    with bench_trainer(cfg, dist) as trainer:
        result = measure_e2e(trainer, settings, dist)
    if dist.is_main:
        print_rich(e2e_table(result))
        if args.json_out:
            atomic_write_json(args.json_out, result)
    return 0
