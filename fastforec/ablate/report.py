"""The report of a study: the finished runs' results, their summary (means and paired
differences, ``stats.py``), ``ablation.md`` (Markdown tables), ``ablation.json`` and
``ablation.png`` (grouped bars)."""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from fastforec.ablate.data import data_commands
from fastforec.ablate.method_names import aux_pair_label, aux_pairs, baselines, method_label
from fastforec.ablate.plan import DataSpec, Run, plan_runs, variant
from fastforec.ablate.pool import PROVENANCE_FILE, Outcome
from fastforec.ablate.stats import CONFIDENCE, mean_ci, paired_difference
from fastforec.atomic import atomic_write_bytes, atomic_write_json
from fastforec.errors import quote_names

PLOT_INCHES = (8.0, 4.5)
DPI = 110


def variant_label(budget: str, image_format: str, jpeg_quality: int) -> str:
    fmt = {"": "", "png": ", PNG", "jpg": f", JPEG q{jpeg_quality}"}[image_format]
    return f"{budget} labeled{fmt}"


def report_columns(budgets: Sequence[str], spec: DataSpec) -> list[tuple[str, str]]:
    """(variant key, label) of every training set, budget-major."""
    return [(variant(b, f), variant_label(b, f, spec.jpeg_quality)) for b in budgets for f in spec.formats]


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
                 "miou_best": r["miou_best"], "step": r.get("step"), "precision": _precision(path.parent, r),
                 "provenance": _attempts(path.parent)})
    return found


def last_miou(study: Path, method: str, budget: str, model: str = "student") -> dict[int, float]:
    """{seed: mIoU %} of every finished run of (method, budget) in a study directory, whatever the
    study's plan (the gate scripts in tools/ read studies run with other options)."""
    found = {}
    for results in sorted((study / "runs").glob(f"{method}_b{budget}_s*/results.json")):
        seed = int(results.parent.name.rsplit("_s", 1)[1])
        models = json.loads(results.read_text())["models"]
        if model in models:
            found[seed] = 100 * models[model]["miou_last"]
    return found


def _precision(run_dir: Path, results: dict[str, Any]) -> str | None:
    """The precision a run trained in: results.json says it; for a run from before it did, the
    deepspeed block of its config.json (then always the one it ran: nothing chose it per machine)."""
    if results.get("precision"):
        return results["precision"]
    config = run_dir / "config.json"
    if not config.is_file():
        return None
    from fastforec.precision import precision_mode  # lazy: torch, for old runs only

    return precision_mode(json.loads(config.read_text()).get("deepspeed") or {})


def _attempts(run_dir: Path) -> list[dict[str, Any]] | None:
    """The run's provenance records (one per attempt), or None for a run from before they existed."""
    path = run_dir / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _by_seed(runs: Sequence[dict[str, Any]], key: str) -> dict[int, float]:
    return {r["seed"]: 100 * r[key] for r in runs if _finite(r.get(key))}


def _minus(student: dict[int, float], found: dict[tuple[str, str], list[dict[str, Any]]], other: str,
           data: str) -> dict[str, Any] | None:
    """``student`` minus ``other``'s students on the same training set, paired by seed."""
    return paired_difference(student, _by_seed(found.get((other, data), []), "miou_last"))


def summary(found: dict[tuple[str, str], list[dict[str, Any]]], methods: Sequence[str],
            budgets: Sequence[str], formats: Sequence[str] = ("",)) -> dict[str, Any]:
    """Per method and variant (budget, or budget_format; mIoU in %): student and teacher
    statistics, the paired differences of the student against each baseline that was run and
    (``vs_aux``) against the same base with a later auxiliary task (``aux_pairs``), and (several
    formats) against the same method trained from the first format's shards."""
    table: dict[str, dict[str, Any]] = {}
    pairs = aux_pairs(methods)
    for m in methods:
        table[m] = {}
        for b in (variant(budget, fmt) for budget in budgets for fmt in formats):
            runs = found.get((m, b), [])
            student, teacher = _by_seed(runs, "miou_last"), _by_seed(runs, "teacher_miou_last")
            table[m][b] = {"student": mean_ci(list(student.values())) if student else None,
                           "teacher": mean_ci(list(teacher.values())) if teacher else None, "runs": runs,
                           "vs": {base: _minus(student, found, base, b) for base in baselines(methods) if base != m},
                           "vs_aux": {other: _minus(student, found, other, b) for first, other in pairs if first == m}}
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
        lines.append(f"| {method_label(m, methods)} | " + " | ".join(cells) + " |")
    if len(formats) > 1:
        others = [(b, f) for b in budgets for f in formats[1:]]
        lines += ["", f"Paired difference of the student's mIoU (points) against the same method and seed "
                  f"trained from {formats[0].upper()} shards, mean [95 % CI]:", "",
                  "| method | " + " | ".join(variant_label(b, f, spec.jpeg_quality) for b, f in others) + " |",
                  "|---|" + "---:|" * len(others)]
        for m in methods:
            cells = [fmt_stat(table[m][variant(b, f)]["vs_format"][formats[0]], signed=True) for b, f in others]
            lines.append(f"| {method_label(m, methods)} | " + " | ".join(cells) + " |")
    bases = baselines(methods)
    if any(base != m for base in bases for m in methods):  # a study of one baseline compares nothing
        lines += ["", "Paired difference of the student's mIoU (points), mean [95 % CI]; an interval that "
                  "excludes 0 is a difference the seeds can tell:", "",
                  "| method | " + " | ".join(f"{label}: vs {base}" for _, label in columns for base in bases) + " |",
                  "|---|" + "---:|" * (len(columns) * len(bases))]
        for m in methods:
            cells = [fmt_stat(table[m][c]["vs"].get(base), signed=True) if base != m else "·"
                     for c, _ in columns for base in bases]
            lines.append(f"| {method_label(m, methods)} | " + " | ".join(cells) + " |")
    pairs = aux_pairs(methods)
    if pairs:
        lines += ["", "The auxiliary tasks against each other on the same base (the paper's FOrec - reconstruction "
                  "and FOrec - fg/bg prediction): paired difference of the student's mIoU (points), mean [95 % CI]:",
                  "", "| difference | " + " | ".join(label for _, label in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for a, b in pairs:
            cells = [fmt_stat(table[a][c]["vs_aux"][b], signed=True) for c, _ in columns]
            lines.append(f"| {aux_pair_label(a, b)} | " + " | ".join(cells) + " |")
    lines += ["", precision_line(table), "",
              "Every run (student mIoU %, teacher in parentheses, seed in brackets):", "",
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


def precision_line(table: dict[str, Any]) -> str:
    """Which precision the finished runs trained in: a CPU recipe's ``train.bf16_on_amx`` makes it
    depend on the machine, and the bf16 block moves a run about as much as another seed does; a
    mix names the runs outside the most common precision."""
    runs: dict[str, list[str]] = {}
    for m, cells in table.items():
        for b, cell in cells.items():
            for r in cell["runs"]:
                runs.setdefault(r.get("precision") or "not recorded", []).append(f"{m}_b{b}_s{r['seed']}")
    if not runs:
        return "Precision: no run has finished."
    if len(runs) == 1:
        return f"Precision: {next(iter(runs))} in every run."
    common = max(runs, key=lambda name: len(runs[name]))
    others = "; ".join(f"{name} in {quote_names(sorted(names))}" for name, names in sorted(runs.items())
                       if name != common)
    return (f"Precision: {common} in {len(runs[common])} runs; {others}. Differences within a cell then mix "
            f"precisions (train.bf16_on_amx chooses it per machine; --set train.bf16_on_amx=false is fp32 "
            f"everywhere).")


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
                ax.bar(x, stat["mean"], width * 0.9, color=f"C{i}", label=method_label(m, methods) if j == 0 else None,
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
