"""`fastforec ablate`: the paper's Table 4/5 comparison, on a synthetic dataset, in one command.

    fastforec ablate --config configs/synth_ablation.json \\
        --methods supervised,mean_teacher,rec,forec,fgbg --budgets 20,40 --seeds 3 --out runs/ablation

1. Data (once per output directory): ``dataprep synth`` writes one synthetic VOC-layout raw tree;
   for each budget B, ``dataprep splits`` draws B labeled ids from its classic train list (the
   rest of the training ids are unlabeled, as in the paper's VOC 92/183 partitions) and
   ``dataprep voc`` converts that partition to shards. One partition per budget, shared by all
   methods and seeds: seeds vary the training (init, order, augmentation), not the split.
2. Runs: ``fastforec/train.py`` as a subprocess per (method, budget, seed), sequentially, with
   ``--set method.name=M --set train.seed=S --set data.root=<shards of B>``. A run whose
   ``results.json`` exists is skipped; one with checkpoints but no results is resumed. A failed
   run is reported (its log is ``train.log`` in its run directory) and the study goes on.
3. Report: ``ablation.md`` (mean +- std of the final mIoU per method and budget: the paper's
   Table 4 layout, plus every seed), ``ablation.json`` and ``ablation.png``.

The study's data parameters are stored in ``OUT/data/study.json``; re-running into the same
directory with different ones is refused (results of two datasets must not be averaged).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from fastforec.atomic import atomic_write_bytes, atomic_write_json
from fastforec.config import METHODS, ConfigError, load_config

# Defaults of the study (see docs/results.md for why): a few hundred small synthetic images.
DEFAULT_NUM_TRAIN = 400
DEFAULT_NUM_VAL = 60
DEFAULT_SIZE = (96, 128)  # H x W of the synthetic images
DEFAULT_DATA_SEED = 0
DEFAULT_SPLIT_SEED = 0
STUDY_FORMAT = 1
OMP_WAIT_POLICY = "PASSIVE"
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
METHOD_LABELS = {"supervised": "Supervised only", "mean_teacher": "Mean teacher", "rec": "+ reconstruction (rec)",
                 "forec": "+ FOrec", "fgbg": "+ fg/bg prediction"}
# Paper (VOC classic, ResNet-101 DeepLabV3+), Table 4/5: mIoU % at 92 / 183 labeled images.
PAPER_TABLE = {"mean_teacher": (67.82, 70.78), "rec": (68.99, 72.35), "forec": (70.99, 74.67)}
PAPER_BUDGETS = (92, 183)
PLOT_INCHES = (8.0, 4.5)
DPI = 110


class AblationError(ValueError):
    """Bad arguments or a study directory that does not match them."""


# ---------------------------------------------------------------------------------------------
# the study


@dataclass(frozen=True)
class DataSpec:
    """What the synthetic dataset and its partitions are made from (stored in study.json)."""

    num_train: int
    num_val: int
    height: int
    width: int
    data_seed: int
    split_seed: int
    format: int = STUDY_FORMAT


@dataclass(frozen=True)
class Run:
    method: str
    budget: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}_b{self.budget}_s{self.seed}"


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise AblationError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                            f"{', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise AblationError(f"--methods: '{text}' names a method twice")
    return methods


def parse_budgets(text: str, *, num_train: int) -> list[int]:
    try:
        budgets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise AblationError(f"--budgets: '{text}' is not a comma-separated list of integers (e.g. 20,40)") from None
    # Labeled ids come from the classic list: every second synthetic training id.
    pool = num_train // 2
    bad = [b for b in budgets if not 1 <= b <= pool]
    if bad or not budgets:
        raise AblationError(f"--budgets: {bad or '(none)'} not in 1..{pool} (half of --num-train {num_train} "
                            f"images have classic labels)")
    if len(set(budgets)) != len(budgets):
        raise AblationError(f"--budgets: '{text}' names a budget twice")
    return budgets


def plan_runs(methods: Sequence[str], budgets: Sequence[int], seeds: int) -> list[Run]:
    """Seed-major order: every (method, budget) gets its first seed before any gets a second,
    so a study stopped early has a complete table with fewer seeds."""
    return [Run(m, b, s) for s in range(seeds) for b in budgets for m in methods]


# ---------------------------------------------------------------------------------------------
# data


def data_dirs(out: Path, budget: int) -> tuple[Path, Path]:
    return out / "data" / f"splits_{budget}", out / "data" / f"shards_{budget}"


def check_study(out: Path, spec: DataSpec) -> None:
    """Refuse to mix datasets: an existing study.json must describe the same data."""
    path = out / "data" / "study.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    for key, value in asdict(spec).items():
        if old.get(key) != value:
            raise AblationError(f"'{path}' was made with {key}={old.get(key)!r}, this run asks for {value!r}; use "
                                f"another --out, or the same data options to continue that study")


def prepare_data(out: Path, spec: DataSpec, budgets: Sequence[int], console: Any) -> dict[int, Path]:
    """The shard directory of every budget, making whatever is missing (resumable)."""
    from dataprep.convert import (DEFAULT_SHARD_MB, DEFAULT_SHARD_SAMPLES, RunOptions, default_workers, make_caps,
                                  run_conversion)
    from dataprep.splits import random_partition, write_partition
    from dataprep.synth import default_ids, synthesize
    from dataprep.voc import voc_plan

    raw = out / "data" / "raw"
    marker = out / "data" / "study.json"
    if not marker.is_file():
        console.print(f"dataprep synth: {spec.num_train} + {spec.num_val} images of {spec.height}x{spec.width} "
                      f"-> {raw}")
        train_ids, val_ids = default_ids("voc", spec.num_train, spec.num_val)
        synthesize("voc", raw, train_ids=train_ids, val_ids=val_ids, size=(spec.height, spec.width),
                   seed=spec.data_seed, workers=default_workers(), quiet=True)
        atomic_write_json(marker, asdict(spec))  # written last: the raw tree is complete
    shards = {}
    for budget in budgets:
        split_dir, shard_dir = data_dirs(out, budget)
        if not (shard_dir / "manifest.json").is_file():
            console.print(f"dataprep splits + voc: {budget} labeled -> {shard_dir}")
            partition = random_partition(root=raw, layout="voc", labeled=budget, seed=spec.split_seed)
            write_partition(partition, split_dir)
            run_conversion(voc_plan(root=raw, split_dir=split_dir, blender=False, skip_bad=False),
                           RunOptions(out=shard_dir, workers=default_workers(), quiet=True,
                                      caps=make_caps(shard_samples=DEFAULT_SHARD_SAMPLES, shard_mb=DEFAULT_SHARD_MB)))
        shards[budget] = shard_dir
    return shards


def data_commands(out: Path, spec: DataSpec, budgets: Sequence[int]) -> list[str]:
    """The dataprep commands equivalent to :func:`prepare_data` (for the report)."""
    raw = out / "data" / "raw"
    cmds = [f"dataprep synth --layout voc --out {raw} --size {spec.height}x{spec.width} --num-train {spec.num_train} "
            f"--num-val {spec.num_val} --seed {spec.data_seed}"]
    for b in budgets:
        split_dir, shard_dir = data_dirs(out, b)
        cmds.append(f"dataprep splits --root {raw} --layout voc --labeled {b} --seed {spec.split_seed} "
                    f"--out {split_dir}")
        cmds.append(f"dataprep voc --root {raw} --split-dir {split_dir} --out {shard_dir}")
    return cmds


# ---------------------------------------------------------------------------------------------
# runs


def train_command(run: Run, *, config: Path, run_dir: Path, shards: Path, overrides: Sequence[str],
                  resume: bool) -> list[str]:
    script = Path(__file__).resolve().parent / "train.py"
    cmd = [sys.executable, str(script), "--config", str(config), "--run-dir", str(run_dir),
           "--set", f"method.name={run.method}", "--set", f"train.seed={run.seed}",
           "--set", f"data.root={shards}", "--set", f"train.name={run.name}"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def child_env(torch_threads: int | None) -> dict[str, str]:
    """No launcher variables from this process (a child is a world of one of its own).

    OpenMP threads wait passively unless the user says otherwise: with libgomp's default
    (active spinning after every parallel region) a CPU shared with other processes made the
    training steps 10-30x slower in our measurements (docs/results.md).
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    if torch_threads is not None:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    return env


def has_checkpoint(run_dir: Path) -> bool:
    from fastforec.checkpoint import list_checkpoints

    return bool(list_checkpoints(run_dir / "checkpoints"))


@dataclass
class Outcome:
    run: Run
    status: str  # "done" (earlier), "ran", "failed"
    seconds: float = 0.0
    log: str = ""


def execute(run: Run, *, out: Path, config: Path, shards: Path, overrides: Sequence[str],
            torch_threads: int | None) -> Outcome:
    run_dir = out / "runs" / run.name
    if (run_dir / "results.json").is_file():
        return Outcome(run, "done")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "train.log"
    resume = has_checkpoint(run_dir)
    if not resume:
        # A killed attempt without a checkpoint starts over: drop its history, or the new run's
        # records would be appended after it.
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    cmd = train_command(run, config=config, run_dir=run_dir, shards=shards, overrides=overrides, resume=resume)
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(torch_threads)).returncode
    seconds = time.perf_counter() - start
    ok = code == 0 and (run_dir / "results.json").is_file()
    return Outcome(run, "ran" if ok else "failed", seconds, str(log))


# ---------------------------------------------------------------------------------------------
# report


def collect(out: Path, runs: Sequence[Run]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Finished results per (method, budget), in seed order."""
    found: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        path = out / "runs" / run.name / "results.json"
        if path.is_file():
            r = json.loads(path.read_text())
            found.setdefault((run.method, run.budget), []).append(
                {"seed": run.seed, "miou_last": r["miou_last"], "miou_best": r["miou_best"], "step": r.get("step")})
    return found


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f} (1 seed)"


def summary(found: dict[tuple[str, int], list[dict[str, Any]]], methods: Sequence[str],
            budgets: Sequence[int]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        table[m] = {}
        for b in budgets:
            values = [r["miou_last"] for r in found.get((m, b), []) if _finite(r["miou_last"])]
            mean, std = mean_std(values) if values else (None, None)
            table[m][str(b)] = {"mean": mean, "std": std, "n": len(values), "runs": found.get((m, b), [])}
    return table


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def markdown(table: dict[str, Any], *, methods: Sequence[str], budgets: Sequence[int], seeds: int, spec: DataSpec,
             config: Path, commands: Sequence[str], failed: Sequence[Outcome]) -> str:
    lines = ["# Ablation (paper Table 4 layout)", "",
             f"Final mIoU (%) on the validation split, mean ± sample std over seeds (planned: {seeds}); "
             f"config `{config}`; synthetic VOC-layout data: {spec.num_train} training images "
             f"({spec.height}x{spec.width}), {spec.num_val} validation images.", "",
             "| method | " + " | ".join(f"{b} labeled" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for m in methods:
        cells = [cell([r["miou_last"] for r in table[m][str(b)]["runs"] if _finite(r["miou_last"])]) for b in budgets]
        lines.append(f"| {METHOD_LABELS[m]} | " + " | ".join(cells) + " |")
    lines += ["", "Every run (final mIoU %, seed in brackets):", "", "| method | budget | runs |", "|---|---:|---|"]
    for m in methods:
        for b in budgets:
            runs = table[m][str(b)]["runs"]
            lines.append(f"| {m} | {b} | " + (", ".join(f"{100 * r['miou_last']:.2f} [{r['seed']}]" for r in runs)
                                              or "-") + " |")
    if failed:
        lines += ["", "Failed runs (see their logs):", ""] + [f"- {o.run.name}: `{o.log}`" for o in failed]
    lines += ["", "Data preparation (what `fastforec ablate` did, as commands):", "", "```", *commands, "```", ""]
    return "\n".join(lines)


def figure(table: dict[str, Any], *, methods: Sequence[str], budgets: Sequence[int]) -> bytes:
    """Grouped bars (mean, std error bars) per budget, one bar per method, seeds as dots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_INCHES, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        for j, b in enumerate(budgets):
            entry = table[m][str(b)]
            x = j + (i - (len(methods) - 1) / 2) * width
            if entry["mean"] is not None:
                ax.bar(x, 100 * entry["mean"], width * 0.9, color=f"C{i}", label=METHOD_LABELS[m] if j == 0 else None,
                       yerr=100 * entry["std"] if entry["std"] is not None else None, capsize=3)
                ys = [100 * r["miou_last"] for r in entry["runs"] if _finite(r["miou_last"])]
                ax.plot([x] * len(ys), ys, "k.", markersize=3)
    ax.set_xticks(range(len(budgets)), [f"{b} labeled" for b in budgets])
    ax.set_ylabel("final mIoU % (mean ± std over seeds)")
    ax.set_title("ablation on synthetic VOC-layout data", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(out: Path, *, methods: Sequence[str], budgets: Sequence[int], seeds: int, spec: DataSpec,
                 config: Path, failed: Sequence[Outcome]) -> dict[str, Any]:
    runs = plan_runs(methods, budgets, seeds)
    table = summary(collect(out, runs), methods, budgets)
    commands = data_commands(out, spec, budgets)
    atomic_write_bytes(out / "ablation.md", markdown(table, methods=methods, budgets=budgets, seeds=seeds, spec=spec,
                                                     config=config, commands=commands, failed=failed).encode())
    atomic_write_json(out / "ablation.json", {"methods": list(methods), "budgets": list(budgets), "seeds": seeds,
                                              "config": str(config), "data": asdict(spec), "metric": "miou_last",
                                              "table": table, "failed": [o.run.name for o in failed]})
    atomic_write_bytes(out / "ablation.png", figure(table, methods=methods, budgets=budgets))
    return table


# ---------------------------------------------------------------------------------------------
# command line


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not HxW (e.g. 96x128)") from None
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config shared by every run (JSON)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    p.add_argument("--budgets", required=True, help="comma-separated numbers of labeled images, e.g. 20,40")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per (method, budget): 0..N-1")
    p.add_argument("--out", required=True, help="study directory (data/, runs/, ablation.md/.json/.png)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable)")
    p.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="synthetic training images")
    p.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="synthetic validation images")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, help="synthetic image size HxW")
    p.add_argument("--data-seed", type=int, default=DEFAULT_DATA_SEED, help="seed of the synthetic images")
    p.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED, help="seed of the labeled/unlabeled split")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="OMP_NUM_THREADS of each training run (default: inherited)")
    p.add_argument("--report-only", action="store_true", help="write the report from finished runs, run nothing")


def validate(args: argparse.Namespace) -> tuple[list[str], list[int], DataSpec]:
    if args.seeds < 1:
        raise AblationError(f"--seeds must be >= 1, got {args.seeds}")
    if args.num_val < 1 or args.num_train < 2:
        raise AblationError(f"--num-train must be >= 2 and --num-val >= 1, got {args.num_train} and {args.num_val}")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise AblationError(f"--torch-threads must be >= 1, got {args.torch_threads}")
    methods = parse_methods(args.methods)
    budgets = parse_budgets(args.budgets, num_train=args.num_train)
    # The config and every --set must load before an hour of work starts (data.root is set per budget).
    load_config(args.config, args.overrides)
    spec = DataSpec(num_train=args.num_train, num_val=args.num_val, height=args.size[0], width=args.size[1],
                    data_seed=args.data_seed, split_seed=args.split_seed)
    return methods, budgets, spec


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from dataprep.errors import DataprepError

    console = Console(stderr=True)
    out, config = Path(args.out), Path(args.config).resolve()
    try:
        methods, budgets, spec = validate(args)
        check_study(out, spec)
        shards = {} if args.report_only else prepare_data(out, spec, budgets, console)
    except (AblationError, ConfigError, DataprepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed: list[Outcome] = []
    if not args.report_only:
        failed = run_all(plan_runs(methods, budgets, args.seeds), out=out, config=config, shards=shards,
                         overrides=args.overrides, torch_threads=args.torch_threads, console=console)
    write_report(out, methods=methods, budgets=budgets, seeds=args.seeds, spec=spec, config=config, failed=failed)
    print((out / "ablation.md").read_text())
    if failed:
        print(f"error: {len(failed)} run(s) failed: " + ", ".join(f"{o.run.name} (log: {o.log})" for o in failed),
              file=sys.stderr)
        return 1
    return 0


def run_all(runs: Sequence[Run], *, out: Path, config: Path, shards: dict[int, Path], overrides: Sequence[str],
            torch_threads: int | None, console: Any) -> list[Outcome]:
    failed = []
    start = time.perf_counter()
    for i, run in enumerate(runs, start=1):
        outcome = execute(run, out=out, config=config, shards=shards[run.budget], overrides=overrides,
                          torch_threads=torch_threads)
        elapsed = time.perf_counter() - start
        if outcome.status == "done":
            console.print(f"[{i}/{len(runs)}] {run.name}: finished earlier, skipped")
        elif outcome.status == "ran":
            console.print(f"[{i}/{len(runs)}] {run.name}: done in {outcome.seconds:.0f} s "
                          f"(study {elapsed / 60:.1f} min)")
        else:
            console.print(f"[{i}/{len(runs)}] [red]{run.name}: FAILED[/red], log {outcome.log}")
            failed.append(outcome)
    return failed
