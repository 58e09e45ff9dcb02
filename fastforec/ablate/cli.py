"""The `fastforec ablate` command: its arguments, their checks, and the study from data to report
(the package docstring, ``fastforec/ablate/__init__.py``, describes the study)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fastforec.ablate.data import check_study, prepare_data, read_study
from fastforec.ablate.method_names import DEFAULT_METHODS, parse_methods
from fastforec.ablate.plan import (
    DEFAULT_DATA_SEED,
    DEFAULT_JPEG_QUALITY,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SIZE,
    DEFAULT_SPLIT_SEED,
    IMAGE_FORMATS,
    PRESETS,
    AblationError,
    DataSpec,
    Run,
    parse_budgets,
    parse_formats,
    plan_runs,
)
from fastforec.ablate.pool import Outcome, run_all
from fastforec.ablate.report import write_report
from fastforec.config import ConfigError, add_override_argument, load_config, resolve_config_path
from fastforec.terminal import output_console


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not HxW (e.g. 96x128)") from None
    return h, w


NAME = "ablate"
HELP = "methods x label budgets x seeds study (paper Table 4/5)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config shared by every run (JSON)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated methods")
    p.add_argument("--budgets", required=True,
                   help="comma-separated numbers of labeled images, e.g. 24,96 (sslbench also: all)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per (method, budget): 0..N-1")
    p.add_argument("--out", required=True, help="study directory (data/, runs/, ablation.md/.json/.png)")
    add_override_argument(p, help="extra config override for every run (repeatable)")
    p.add_argument("--preset", choices=PRESETS, default=None,
                   help="synthetic dataset: VOC layout (dataprep synth --preset scenes|sslbench) or cityscapes "
                        "(default scenes). Every data option left out takes the study's own value when --out "
                        "holds one (its data/study.json), else its default")
    p.add_argument("--image-formats", default=None,
                   help=f"cityscapes: shard image formats to compare, from {', '.join(IMAGE_FORMATS)} (default png; "
                        f"e.g. png,jpg: every run once per format, paired against the first)")
    p.add_argument("--jpeg-quality", type=int, default=None,
                   help=f"cityscapes jpg shards' quality (default {DEFAULT_JPEG_QUALITY})")
    p.add_argument("--num-train", type=int, default=None,
                   help=f"synthetic training images (default {DEFAULT_NUM_TRAIN})")
    p.add_argument("--num-val", type=int, default=None, help=f"synthetic validation images (default {DEFAULT_NUM_VAL})")
    p.add_argument("--size", type=_size, default=None,
                   help=f"synthetic image size HxW (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]})")
    p.add_argument("--data-seed", type=int, default=None,
                   help=f"seed of the synthetic images (default {DEFAULT_DATA_SEED})")
    p.add_argument("--split-seed", type=int, default=None,
                   help=f"seed of the labeled/unlabeled split (scenes; sslbench budgets follow --data-seed; default "
                        f"{DEFAULT_SPLIT_SEED})")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="OMP_NUM_THREADS of each training run (default: inherited)")
    p.add_argument("--report-only", action="store_true", help="write the report from finished runs, run nothing")


def fill_data_options(args: argparse.Namespace, saved: dict[str, Any] | None) -> None:
    """The data options left out: the study's own (``saved``: its study.json) when --out holds one,
    so that continuing a study or --report-only needs only --out, methods and budgets; else the
    defaults. An option given on the command line stays, and check_study compares it."""
    own = {} if saved is None else {
        "preset": saved.get("preset"), "num_train": saved.get("num_train"), "num_val": saved.get("num_val"),
        "size": (saved["height"], saved["width"]) if "height" in saved and "width" in saved else None,
        "data_seed": saved.get("data_seed"), "split_seed": saved.get("split_seed"),
        "image_formats": saved.get("image_formats") or None, "jpeg_quality": saved.get("jpeg_quality")}
    defaults = {"preset": "scenes", "num_train": DEFAULT_NUM_TRAIN, "num_val": DEFAULT_NUM_VAL, "size": DEFAULT_SIZE,
                "data_seed": DEFAULT_DATA_SEED, "split_seed": DEFAULT_SPLIT_SEED, "image_formats": None,
                "jpeg_quality": DEFAULT_JPEG_QUALITY}
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, own[name] if own.get(name) is not None else default)


def validate(args: argparse.Namespace) -> tuple[list[str], list[str], DataSpec]:
    fill_data_options(args, None)  # a no-op after run() filled them from the study
    if args.seeds < 1:
        raise AblationError(f"--seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise AblationError(f"--jobs must be >= 1, got {args.jobs}")
    if args.num_val < 1 or args.num_train < 2:
        raise AblationError(f"--num-train must be >= 2 and --num-val >= 1, got {args.num_train} and {args.num_val}")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise AblationError(f"--torch-threads must be >= 1, got {args.torch_threads}")
    methods = parse_methods(args.methods)
    budgets = parse_budgets(args.budgets, num_train=args.num_train, preset=args.preset)
    # The config and every --set must load before an hour of work starts (data.root is set per budget).
    load_config(args.config, args.overrides)
    if not 1 <= args.jpeg_quality <= 100:
        raise AblationError(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")
    spec = DataSpec(preset=args.preset, num_train=args.num_train, num_val=args.num_val, height=args.size[0],
                    width=args.size[1], data_seed=args.data_seed, split_seed=args.split_seed,
                    image_formats=parse_formats(args.image_formats, preset=args.preset),
                    jpeg_quality=args.jpeg_quality)
    return methods, budgets, spec


def _check_finished_runs(out: Path, runs: list[Run]) -> None:
    """--report-only over a folder with none of the study's runs finished would write a report of
    empty cells (and data commands that never ran): refused, writing nothing."""
    if not any((out / "runs" / r.name / "results.json").is_file() for r in runs):
        raise AblationError(f"--report-only: '{out}' holds none of these runs finished ({runs[0].name}, ...); run "
                            f"the same command without --report-only first, or check --out, --methods, --budgets")


def run(args: argparse.Namespace) -> int:
    console = output_console(stderr=True)
    out = Path(args.out)
    try:
        # the file every child trains with: a shipped config's name or docs path resolved here, once
        config = resolve_config_path(args.config).resolve()
        fill_data_options(args, read_study(out))
        methods, budgets, spec = validate(args)
        check_study(out, spec)
        if args.report_only:
            _check_finished_runs(out, plan_runs(methods, budgets, args.seeds, spec.formats))
        shards = {} if args.report_only else prepare_data(out, spec, budgets, console)
    except (AblationError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed: list[Outcome] = []
    if not args.report_only:
        failed = run_all(plan_runs(methods, budgets, args.seeds, spec.formats), out=out, config=config, shards=shards,
                         overrides=args.overrides, torch_threads=args.torch_threads, jobs=args.jobs, console=console)
    write_report(out, methods=methods, budgets=budgets, seeds=args.seeds, spec=spec, config=config, failed=failed)
    print((out / "ablation.md").read_text())
    print(f"report: {out / 'ablation.md'} (above), {out / 'ablation.json'} (every run, with its provenance), "
          f"{out / 'ablation.png'}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} run(s) failed: " + ", ".join(f"{o.run.name} (log: {o.log})" for o in failed),
              file=sys.stderr)
        return 1
    return 0
