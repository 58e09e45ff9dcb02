"""What a step or e2e benchmark is asked to do: the command-line arguments as settings and as the
run config under test."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from fastforec.config import Config, ConfigError, load_config
from fastforec.errors import UserError

DEFAULT_BATCHES = 10  # timed steps per round (and per contender for e2e)
DEFAULT_ROUNDS = 3
WARMUP_STEPS = 2  # first steps pay for allocator growth and oneDNN/cuDNN algorithm selection
FLOPS_ONLY = 0  # `--batches 0`: FLOPs per sample from the config alone (meta device, no data)


class BenchError(UserError, ValueError):
    """Bad benchmark arguments: the message says what to change."""


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
    from fastforec.methods import check_config  # lazy: torch (bench --help stays instant)
    from fastforec.models.build import check_pretrained

    check_config(cfg)
    if need_data:
        cfg.check_paths()
        check_pretrained(cfg.model)
    return cfg
