"""`fastforec ablate`: the paper's Table 4/5 comparison, on a synthetic dataset, in one command.

    fastforec ablate --config configs/sslbench.json --preset sslbench \\
        --methods supervised,mean_teacher,rec,forec,fgbg --budgets 24,96 --seeds 4 --jobs 2 --out runs/sslbench
    # what JPEG q95 training shards cost against PNG ones (Cityscapes layout), paired by seed:
    fastforec ablate --config configs/sslbench.json --preset cityscapes --image-formats png,jpg \\
        --jpeg-quality 95 --methods mean_teacher --budgets 24 --seeds 12 --jobs 2 --torch-threads 1 \\
        --num-train 200 --num-val 40 --size 96x192 --out runs/format_study

1. Data (once per output directory), by running the ``dataprep`` command line:
   - preset ``sslbench``: ``dataprep synth --preset sslbench --budgets ...`` writes the raw tree
     with nested, class-balanced labeled budgets (``all`` labels every training image), and
     ``dataprep voc`` converts each budget's partition to shards;
   - preset ``scenes``: ``dataprep synth`` writes the raw tree; per budget B, ``dataprep splits``
     draws B labeled ids from its classic train list and ``dataprep voc`` converts it;
   - preset ``cityscapes``: ``dataprep synth --layout cityscapes`` writes PNG street scenes; per
     budget B, ``dataprep splits`` draws B labeled ids and ``dataprep cityscapes`` converts them
     once per ``--image-formats`` entry (``png`` keeps the PNGs, ``jpg`` re-encodes the training
     splits at ``--jpeg-quality``; val stays PNG in both, so every format is evaluated on the
     same pixels and the format's cost is a paired difference).
   One partition per budget, shared by all methods and seeds: seeds vary the training (init,
   order, augmentation), not the split.
2. Runs: ``fastforec/train.py`` as a subprocess per (method, budget, format, seed), ``--jobs`` at a time,
   with ``--set method.name=M --set train.seed=S --set data.root=<shards of B>``: every method
   of a budget gets the same seeds, so differences between methods are paired by seed. A run
   whose ``results.json`` exists is skipped; one with checkpoints but no results is resumed. A
   failed run is reported (its log is ``train.log`` in its run directory) and the study goes on.
3. Report: ``ablation.md`` (per method and budget the mean of the last evaluation's mIoU, student
   and teacher; the paired difference against supervised and against mean teacher with a t-based
   95 % confidence interval; every seed), ``ablation.json`` and ``ablation.png``.

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
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from fastforec.atomic import atomic_write_bytes, atomic_write_json
from fastforec.config import AUX_TASKS, BASES, METHODS, NAME_PARTS, ConfigError, load_config
from fastforec.dataprep_cli import run_dataprep
from fastforec.errors import UserError
from fastforec.provenance import provenance

# Defaults of the study (see docs/results.md for why): a few hundred small synthetic images.
DEFAULT_NUM_TRAIN = 400
DEFAULT_NUM_VAL = 60
DEFAULT_SIZE = (96, 128)  # H x W of the synthetic images
DEFAULT_DATA_SEED = 0
DEFAULT_SPLIT_SEED = 0
STUDY_FORMAT = 2
PRESETS = ("scenes", "sslbench", "cityscapes")
# Shard image formats of the cityscapes preset (dataprep cityscapes --image-format); the VOC
# presets keep the synthetic JPEGs as they are.
IMAGE_FORMATS = ("png", "jpg")
DEFAULT_JPEG_QUALITY = 95
ALL = "all"  # the budget that labels every training image (sslbench)
# Paired differences are reported against these, and against every plain base that was run (a
# study of unimatch and unimatch+forec compares the two).
BASELINES = ("supervised", "mean_teacher")
CONFIDENCE = 0.95
PROVENANCE_FILE = "provenance.json"  # in each run directory: what its result depends on
# Two-sided 95 % critical values of Student's t for 1..30 degrees of freedom (standard table).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
Z_975 = 1.959964
OMP_WAIT_POLICY = "PASSIVE"
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
METHOD_LABELS = {"supervised": "Supervised only", "mean_teacher": "Mean teacher", "rec": "+ reconstruction (rec)",
                 "forec": "+ FOrec", "fgbg": "+ fg/bg prediction"}
BASE_LABELS = {"supervised": "Supervised only", "mean_teacher": "Mean teacher", "fixmatch": "FixMatch",
               "unimatch": "UniMatch", "unimatch_v2": "UniMatch V2"}
AUX_LABELS = {"rec": "reconstruction", "forec": "FOrec", "fgbg": "fg/bg prediction"}
BASE_AUX_SEP = "+"  # --methods unimatch+forec: base x auxiliary task
PLOT_INCHES = (8.0, 4.5)
DPI = 110


class AblationError(UserError, ValueError):
    """Bad arguments or a study directory that does not match them."""


# ---------------------------------------------------------------------------------------------
# the study


@dataclass(frozen=True)
class DataSpec:
    """What the synthetic dataset and its partitions are made from (stored in study.json)."""

    preset: str
    num_train: int
    num_val: int
    height: int
    width: int
    data_seed: int
    split_seed: int
    format: int = STUDY_FORMAT
    image_formats: str = ""  # cityscapes preset: comma-separated IMAGE_FORMATS, the first is the reference
    jpeg_quality: int = DEFAULT_JPEG_QUALITY

    @property
    def formats(self) -> list[str]:
        """The data variants of every budget: image formats, or [""] (the VOC presets' one variant)."""
        return self.image_formats.split(",") if self.image_formats else [""]

    @property
    def layout(self) -> str:
        return "cityscapes" if self.preset == "cityscapes" else "voc"


def variant(budget: str, image_format: str) -> str:
    """The key of one training set: its budget, and its image format when the study has several."""
    return f"{budget}_{image_format}" if image_format else budget


def variant_label(budget: str, image_format: str, jpeg_quality: int) -> str:
    fmt = {"": "", "png": ", PNG", "jpg": f", JPEG q{jpeg_quality}"}[image_format]
    return f"{budget} labeled{fmt}"


def report_columns(budgets: Sequence[str], spec: DataSpec) -> list[tuple[str, str]]:
    """(variant key, label) of every training set, budget-major."""
    return [(variant(b, f), variant_label(b, f, spec.jpeg_quality)) for b in budgets for f in spec.formats]


@dataclass(frozen=True)
class Run:
    method: str
    budget: str  # a number of labeled images, or "all"
    seed: int
    image_format: str = ""  # one of IMAGE_FORMATS in a cityscapes study

    @property
    def data(self) -> str:
        return variant(self.budget, self.image_format)

    @property
    def name(self) -> str:
        return f"{self.method}_b{self.data}_s{self.seed}"


def method_parts(method: str) -> tuple[str, str] | None:
    """(base, aux) of a --methods entry: a method.name (forec = mean_teacher x forec), a base
    (unimatch) or base+aux (unimatch+forec); None when it is neither."""
    if method in METHODS:
        return NAME_PARTS[method]
    base, _, aux = method.partition(BASE_AUX_SEP)
    aux = aux or "none"
    return (base, aux) if base in BASES and aux in AUX_TASKS else None


def method_label(method: str) -> str:
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    base, aux = method_parts(method) or (method, "none")
    return BASE_LABELS[base] + ("" if aux == "none" else f" + {AUX_LABELS[aux]}")


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if method_parts(m) is None]
    if unknown or not methods:
        raise AblationError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                            f"{', '.join(METHODS)}, or a base ({', '.join(BASES)}) with an optional "
                            f"'{BASE_AUX_SEP}<aux>' ({', '.join(a for a in AUX_TASKS if a != 'none')}), "
                            f"e.g. unimatch{BASE_AUX_SEP}forec")
    if len(set(methods)) != len(methods):
        raise AblationError(f"--methods: '{text}' names a method twice")
    return methods


def parse_budgets(text: str, *, num_train: int, preset: str) -> list[str]:
    """Budgets as strings: numbers of labeled images, and (sslbench) "all"."""
    tokens = [b.strip() for b in text.split(",") if b.strip()]
    numbers = [t for t in tokens if t != ALL]
    try:
        values = [int(t) for t in numbers]
    except ValueError:
        raise AblationError(f"--budgets: '{text}' is not a comma-separated list of integers (e.g. 20,40)"
                            + (f" or '{ALL}'" if preset == "sslbench" else "")) from None
    if ALL in tokens and preset != "sslbench":
        raise AblationError(f"--budgets: '{ALL}' exists for --preset sslbench only")
    # scenes: labeled ids come from the classic list, every second synthetic training id;
    # sslbench: every training id has a label, and "all" is the budget that uses them all.
    pool = num_train // 2 if preset == "scenes" else num_train - 1  # cityscapes: any training id
    bad = [b for b in values if not 1 <= b <= pool]
    if bad or not tokens:
        raise AblationError(f"--budgets: {bad or '(none)'} not in 1..{pool} (" +
                            (f"half of --num-train {num_train} images have classic labels)" if preset == "scenes"
                             else f"--num-train {num_train} minus one; use '{ALL}' for every image)"))
    if len(set(tokens)) != len(tokens):
        raise AblationError(f"--budgets: '{text}' names a budget twice")
    return [str(v) for v in values] + ([ALL] if ALL in tokens else [])


def parse_formats(text: str | None, *, preset: str) -> str:
    """--image-formats as DataSpec.image_formats: cityscapes only (default png)."""
    if preset != "cityscapes":
        if text:
            raise AblationError("--image-formats exists for --preset cityscapes only (the VOC presets keep "
                                "their synthetic JPEGs)")
        return ""
    formats = [f.strip() for f in (text or IMAGE_FORMATS[0]).split(",") if f.strip()]
    bad = [f for f in formats if f not in IMAGE_FORMATS]
    if bad or not formats or len(set(formats)) != len(formats):
        raise AblationError(f"--image-formats: '{text}' must name distinct formats from {', '.join(IMAGE_FORMATS)}, "
                            f"e.g. png,jpg (the first is the one the others are compared with)")
    return ",".join(formats)


def plan_runs(methods: Sequence[str], budgets: Sequence[str], seeds: int, formats: Sequence[str] = ("",)) -> list[Run]:
    """Seed-major order: every (method, budget, format) gets its first seed before any gets a
    second, so a study stopped early has a complete table with fewer seeds."""
    return [Run(m, b, s, f) for s in range(seeds) for b in budgets for f in formats for m in methods]


# ---------------------------------------------------------------------------------------------
# data


def data_dirs(out: Path, budget: str, image_format: str = "") -> tuple[Path, Path]:
    """(split lists, shards) of a budget (and image format): the formats share the split lists."""
    return out / "data" / f"splits_{budget}", out / "data" / f"shards_{variant(budget, image_format)}"


def check_study(out: Path, spec: DataSpec) -> None:
    """Refuse to mix datasets: an existing study.json must describe the same data."""
    path = out / "data" / "study.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    defaults = {f.name: f.default for f in fields(DataSpec)}  # MISSING where a key has no default
    for key, value in asdict(spec).items():
        if old.get(key, defaults[key]) != value:  # keys added since: a study from before has their defaults
            raise AblationError(f"'{path}' was made with {key}={old.get(key)!r}, this run asks for {value!r}; use "
                                f"another --out, or the same data options to continue that study")


def prepare_data(out: Path, spec: DataSpec, budgets: Sequence[str], console: Any) -> dict[str, Path]:
    """The shard directory of every budget (and format: keys are ``variant()``), running whatever
    dataprep command is missing (resumable: dataprep itself skips finished shards)."""
    raw_cmd, budget_cmds = data_commands(out, spec, budgets)
    marker = out / "data" / "study.json"
    if not marker.is_file():
        _dataprep(raw_cmd, console)
        atomic_write_json(marker, asdict(spec))  # written last: the raw tree is complete
    shards = {}
    for budget in budgets:
        split_cmd, *convert_cmds = budget_cmds[budget]  # one conversion per format
        dirs = [data_dirs(out, budget, fmt)[1] for fmt in spec.formats]
        missing = [cmd for cmd, d in zip(convert_cmds, dirs) if not (d / "manifest.json").is_file()]
        if missing:
            _dataprep(split_cmd, console)  # deterministic: every format gets the same lists
            for convert in missing:
                _dataprep(convert, console)
        shards.update({variant(budget, fmt): d for fmt, d in zip(spec.formats, dirs)})
    return shards


def _dataprep(argv: list[str], console: Any) -> None:
    console.print("dataprep " + " ".join(argv))
    try:
        run_dataprep(argv)
    except UserError as e:  # reported the way every other ablate error is
        raise AblationError(str(e)) from None


def data_commands(out: Path, spec: DataSpec, budgets: Sequence[str]) -> tuple[list[str], dict[str, list[list[str]]]]:
    """The dataprep argument lists: the raw tree's, and each budget's (split lists + shards)."""
    raw = out / "data" / "raw"
    raw_cmd = ["synth", "--layout", spec.layout, "--out", str(raw), "--size", f"{spec.height}x{spec.width}",
               "--num-train", str(spec.num_train), "--num-val", str(spec.num_val), "--seed", str(spec.data_seed),
               "--quiet"]
    # sslbench: nested class-balanced budgets; scenes: a seeded random draw from the classic list
    how = ["--balanced"] if spec.preset == "sslbench" else ["--seed", str(spec.split_seed)]
    if spec.preset == "sslbench":
        raw_cmd += ["--preset", "sslbench"]
    per_budget = {}
    for b in budgets:
        split_dir = data_dirs(out, b)[0]
        labeled = str(spec.num_train) if b == ALL else b
        per_budget[b] = [["splits", "--root", str(raw), "--layout", spec.layout, "--labeled", labeled, *how,
                          "--out", str(split_dir)]]
        for fmt in spec.formats:
            convert = [spec.layout, "--root", str(raw), "--split-dir", str(split_dir),
                       "--out", str(data_dirs(out, b, fmt)[1]), "--quiet"]
            if fmt:
                quality = ["--jpeg-quality", str(spec.jpeg_quality)] if fmt == "jpg" else []
                convert += ["--image-format", fmt] + quality
            per_budget[b].append(convert)
    return raw_cmd, per_budget


# ---------------------------------------------------------------------------------------------
# runs


def train_command(run: Run, *, config: Path, run_dir: Path, shards: Path, overrides: Sequence[str],
                  resume: bool) -> list[str]:
    script = Path(__file__).resolve().parent / "train.py"
    # base and aux are always set, so a config that sets them cannot change what a row means.
    parts = method_parts(run.method)
    if parts is None:  # the --methods parser refuses these; a Run built by hand may not
        raise AblationError(f"--methods: '{run.method}' is neither a method, a base nor base{BASE_AUX_SEP}aux")
    base, aux = parts
    name = run.method if run.method in METHODS else "mean_teacher"
    cmd = [sys.executable, str(script), "--config", str(config), "--run-dir", str(run_dir),
           "--set", f"method.name={name}", "--set", f"method.base={base}", "--set", f"method.aux={aux}",
           "--set", f"train.seed={run.seed}",
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
    from fastforec.checkpoint_files import list_checkpoints

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
    # What this result depends on (code, packages, CPU, shards), one record per attempt: a run
    # resumed on another machine is no longer a one-machine result, and this shows it.
    record = run_dir / PROVENANCE_FILE
    attempts = json.loads(record.read_text()) if record.is_file() else []
    atomic_write_json(record, attempts + [{**provenance(data_root=shards), "resumed": resume}])
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(torch_threads)).returncode
    seconds = time.perf_counter() - start
    ok = code == 0 and (run_dir / "results.json").is_file()
    return Outcome(run, "ran" if ok else "failed", seconds, str(log))


# ---------------------------------------------------------------------------------------------
# statistics


def t_critical(df: int) -> float:
    """Two-sided 95 % critical value of Student's t with ``df`` degrees of freedom; beyond the
    table, the normal quantile with the first Cornish-Fisher correction (error < 0.003)."""
    if df < 1:
        raise ValueError(f"t_critical needs df >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    return Z_975 + (Z_975 ** 3 + Z_975) / (4 * df)


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and the t-based 95 % confidence interval of the mean (None for n < 2)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "std": None, "n": n, "ci_low": None, "ci_high": None}
    std = statistics.stdev(values)
    half = t_critical(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """a - b over the seeds both have, with the 95 % interval of the mean difference."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return {**mean_ci([a[s] - b[s] for s in seeds]), "seeds": seeds}


# ---------------------------------------------------------------------------------------------
# report


def collect(out: Path, runs: Sequence[Run]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Finished results per (method, variant), in seed order: the last evaluation of the student
    and (when it was evaluated) of the teacher."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        path = out / "runs" / run.name / "results.json"
        if path.is_file():
            r = json.loads(path.read_text())
            models = r.get("models", {"student": r})
            teacher = models.get("teacher", {}).get("miou_last")
            found.setdefault((run.method, run.data), []).append(
                {"seed": run.seed, "miou_last": models.get("student", r)["miou_last"], "teacher_miou_last": teacher,
                 "miou_best": r["miou_best"], "step": r.get("step"), "provenance": _attempts(path.parent)})
    return found


def _attempts(run_dir: Path) -> list[dict[str, Any]] | None:
    """The run's provenance records (one per attempt), or None for a run from before they existed."""
    path = run_dir / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _by_seed(runs: Sequence[dict[str, Any]], key: str) -> dict[int, float]:
    return {r["seed"]: 100 * r[key] for r in runs if _finite(r.get(key))}


def baselines(methods: Sequence[str]) -> list[str]:
    """The methods of this study that others are compared with, in order."""
    plain = [m for m in methods if m not in BASELINES and method_parts(m) == (m, "none")]
    return [b for b in BASELINES if b in methods] + plain


def summary(found: dict[tuple[str, str], list[dict[str, Any]]], methods: Sequence[str],
            budgets: Sequence[str], formats: Sequence[str] = ("",)) -> dict[str, Any]:
    """Per method and variant (budget, or budget_format; mIoU in %): student and teacher
    statistics, the paired differences of the student against each baseline that was run, and
    (several formats) against the same method trained from the first format's shards."""
    table: dict[str, dict[str, Any]] = {}
    for m in methods:
        table[m] = {}
        for b in (variant(budget, fmt) for budget in budgets for fmt in formats):
            runs = found.get((m, b), [])
            student, teacher = _by_seed(runs, "miou_last"), _by_seed(runs, "teacher_miou_last")
            entry: dict[str, Any] = {"student": mean_ci(list(student.values())) if student else None,
                                     "teacher": mean_ci(list(teacher.values())) if teacher else None,
                                     "runs": runs, "vs": {}}
            for base in baselines(methods):
                if base != m:
                    entry["vs"][base] = paired_difference(student, _by_seed(found.get((base, b), []), "miou_last"))
            table[m][b] = entry
        for budget in budgets:
            reference = _by_seed(found.get((m, variant(budget, formats[0])), []), "miou_last")
            for fmt in formats[1:]:
                key = variant(budget, fmt)
                table[m][key]["vs_format"] = {formats[0]: paired_difference(
                    _by_seed(found.get((m, key), []), "miou_last"), reference)}
    return table


def fmt_stat(stat: dict[str, Any] | None, *, signed: bool = False) -> str:
    if not stat:
        return "-"
    sign = "+" if signed else ""
    if stat["n"] < 2:
        return f"{stat['mean']:{sign}.2f} (1 seed)"
    return f"{stat['mean']:{sign}.2f} [{stat['ci_low']:{sign}.2f}, {stat['ci_high']:{sign}.2f}]"


def markdown(table: dict[str, Any], *, methods: Sequence[str], budgets: Sequence[str], seeds: int, spec: DataSpec,
             config: Path, commands: Sequence[str], failed: Sequence[Outcome]) -> str:
    formats = spec.formats
    columns = report_columns(budgets, spec)
    lines = ["# Ablation (paper Table 4 layout)", "",
             f"mIoU (%) of the last evaluation on the validation split: mean [95 % confidence interval] over "
             f"seeds (planned: {seeds}; the same seeds for every method of a budget, so differences are "
             f"paired). Config `{config}`; synthetic {spec.layout}-layout data, preset `{spec.preset}`: "
             f"{spec.num_train} training images ({spec.height}x{spec.width}), {spec.num_val} validation images"
             + (" (PNG for every format)." if spec.image_formats else "."), "",
             "| method | " + " | ".join(f"{label}: student | teacher" for _, label in columns) + " |",
             "|---|" + "---:|---:|" * len(columns)]
    for m in methods:
        cells = [f"{fmt_stat(table[m][c]['student'])} | {fmt_stat(table[m][c]['teacher'])}" for c, _ in columns]
        lines.append(f"| {method_label(m)} | " + " | ".join(cells) + " |")
    if len(formats) > 1:
        others = [(b, f) for b in budgets for f in formats[1:]]
        lines += ["", f"Paired difference of the student's mIoU (points) against the same method and seed "
                  f"trained from {formats[0].upper()} shards, mean [95 % CI]:", "",
                  "| method | " + " | ".join(variant_label(b, f, spec.jpeg_quality) for b, f in others) + " |",
                  "|---|" + "---:|" * len(others)]
        for m in methods:
            cells = [fmt_stat(table[m][variant(b, f)]["vs_format"][formats[0]], signed=True) for b, f in others]
            lines.append(f"| {method_label(m)} | " + " | ".join(cells) + " |")
    bases = baselines(methods)
    if any(base != m for base in bases for m in methods):  # a study of one baseline compares nothing
        lines += ["", "Paired difference of the student's mIoU (points), mean [95 % CI]; an interval that "
                  "excludes 0 is a difference the seeds can tell:", "",
                  "| method | " + " | ".join(f"{label}: vs {base}" for _, label in columns for base in bases) + " |",
                  "|---|" + "---:|" * (len(columns) * len(bases))]
        for m in methods:
            cells = [fmt_stat(table[m][c]["vs"].get(base), signed=True) if base != m else "·"
                     for c, _ in columns for base in bases]
            lines.append(f"| {method_label(m)} | " + " | ".join(cells) + " |")
    lines += ["", "Every run (student mIoU %, teacher in parentheses, seed in brackets):", "",
              "| method | training set | runs |", "|---|---:|---|"]
    for m in methods:
        for c, _ in columns:
            runs = table[m][c]["runs"]
            lines.append(f"| {m} | {c} | " + (", ".join(
                f"{100 * r['miou_last']:.2f}" + (f" ({100 * r['teacher_miou_last']:.2f})"
                                                  if _finite(r.get("teacher_miou_last")) else "") + f" [{r['seed']}]"
                for r in runs) or "-") + " |")
    if failed:
        lines += ["", "Failed runs (see their logs):", ""] + [f"- {o.run.name}: `{o.log}`" for o in failed]
    lines += ["", "Data preparation (what `fastforec ablate` ran):", "", "```", *commands, "```", ""]
    return "\n".join(lines)


def figure(table: dict[str, Any], *, methods: Sequence[str], columns: Sequence[tuple[str, str]], layout: str) -> bytes:
    """Grouped bars (student mean, 95 % CI error bars) per (key, label) column, one bar per method,
    seeds as dots."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_INCHES, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        for j, (b, _) in enumerate(columns):
            stat = table[m][b]["student"]
            x = j + (i - (len(methods) - 1) / 2) * width
            if stat is not None:
                err = None if stat["ci_high"] is None else stat["ci_high"] - stat["mean"]
                ax.bar(x, stat["mean"], width * 0.9, color=f"C{i}", label=method_label(m) if j == 0 else None,
                       yerr=err, capsize=3)
                ys = list(_by_seed(table[m][b]["runs"], "miou_last").values())
                ax.plot([x] * len(ys), ys, "k.", markersize=3)
    ax.set_xticks(range(len(columns)), [label for _, label in columns])
    ax.set_ylabel("last mIoU % (mean, 95 % CI)")
    ax.set_title(f"ablation on synthetic {layout}-layout data", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(out: Path, *, methods: Sequence[str], budgets: Sequence[str], seeds: int, spec: DataSpec,
                 config: Path, failed: Sequence[Outcome]) -> dict[str, Any]:
    runs = plan_runs(methods, budgets, seeds, spec.formats)
    table = summary(collect(out, runs), methods, budgets, spec.formats)
    raw_cmd, per_budget = data_commands(out, spec, budgets)
    columns = report_columns(budgets, spec)
    commands = [" ".join(["dataprep", *c]) for c in [raw_cmd] + [c for b in budgets for c in per_budget[b]]]
    atomic_write_bytes(out / "ablation.md", markdown(table, methods=methods, budgets=budgets, seeds=seeds, spec=spec,
                                                     config=config, commands=commands, failed=failed).encode())
    atomic_write_json(out / "ablation.json", {"methods": list(methods), "budgets": list(budgets), "seeds": seeds,
                                              "config": str(config), "data": asdict(spec), "metric": "miou_last",
                                              "units": "mIoU %", "confidence": CONFIDENCE,
                                              "table": table, "failed": [o.run.name for o in failed]})
    atomic_write_bytes(out / "ablation.png", figure(table, methods=methods, columns=columns, layout=spec.layout))
    return table


# ---------------------------------------------------------------------------------------------
# command line


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
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    p.add_argument("--budgets", required=True,
                   help="comma-separated numbers of labeled images, e.g. 24,96 (sslbench also: all)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per (method, budget): 0..N-1")
    p.add_argument("--out", required=True, help="study directory (data/, runs/, ablation.md/.json/.png)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable)")
    p.add_argument("--preset", choices=PRESETS, default="scenes",
                   help="synthetic dataset: VOC layout (dataprep synth --preset scenes|sslbench) or cityscapes")
    p.add_argument("--image-formats", default=None,
                   help=f"cityscapes: shard image formats to compare, from {', '.join(IMAGE_FORMATS)} (default png; "
                        f"e.g. png,jpg: every run once per format, paired against the first)")
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY, help="cityscapes jpg shards' quality")
    p.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="synthetic training images")
    p.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help="synthetic validation images")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, help="synthetic image size HxW")
    p.add_argument("--data-seed", type=int, default=DEFAULT_DATA_SEED, help="seed of the synthetic images")
    p.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED,
                   help="seed of the labeled/unlabeled split (scenes; sslbench budgets follow --data-seed)")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="OMP_NUM_THREADS of each training run (default: inherited)")
    p.add_argument("--report-only", action="store_true", help="write the report from finished runs, run nothing")


def validate(args: argparse.Namespace) -> tuple[list[str], list[str], DataSpec]:
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


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    out, config = Path(args.out), Path(args.config).resolve()
    try:
        methods, budgets, spec = validate(args)
        check_study(out, spec)
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
    if failed:
        print(f"error: {len(failed)} run(s) failed: " + ", ".join(f"{o.run.name} (log: {o.log})" for o in failed),
              file=sys.stderr)
        return 1
    return 0


def run_all(runs: Sequence[Run], *, out: Path, config: Path, shards: dict[str, Path], overrides: Sequence[str],
            torch_threads: int | None, jobs: int, console: Any) -> list[Outcome]:
    """Every run, ``jobs`` subprocesses at a time; progress is printed in completion order."""
    failed = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(execute, run, out=out, config=config, shards=shards[run.data], overrides=overrides,
                               torch_threads=torch_threads): run for run in runs}
        for i, future in enumerate(as_completed(futures), start=1):
            run, outcome = futures[future], future.result()
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
