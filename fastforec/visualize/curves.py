"""`fastforec visualize curves`: a run's training curves from its metrics.jsonl.

    fastforec visualize curves --run runs/forec [runs/rec] --out curves.png

Four panels, runs overlaid: the loss terms, the learning rate, pseudo-label coverage and teacher
confidence, and validation mIoU.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from fastforec.visualize import VisualizeError
from fastforec.visualize.figure import agg_figure, save_figure

# metrics.jsonl keys per panel (runlog.py record format).
LOSS_KEYS = ("loss", "loss_s", "loss_u", "loss_rec")
PSEUDO_KEYS = ("pl_coverage", "teacher_conf")
LOSS_STYLES = {"loss": "-", "loss_s": "--", "loss_u": ":", "loss_rec": "-."}
PSEUDO_STYLES = {"pl_coverage": "-", "teacher_conf": "--"}
SYMLOG_LINTHRESH = 1e-2


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise VisualizeError(f"--run '{run}': no metrics.jsonl in it (a run directory written by fastforec train)")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise VisualizeError(f"{path}:{n}: not a JSON record ({e.msg}); the file is damaged") from None
        if not isinstance(record, dict) or "step" not in record:
            raise VisualizeError(f"{path}:{n}: a record needs a 'step' (runlog format)")
        records.append(record)
    return records


def series(records: Sequence[dict[str, Any]], *, kind: str, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the records of ``kind``; missing and non-finite values
    (e.g. loss_u in a supervised run, NaN mIoU) are left out."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if r.get("kind") == kind and isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def curves_figure(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> Figure:
    fig = agg_figure((11, 7.5))
    (ax_loss, ax_lr), (ax_pl, ax_miou) = fig.subplots(2, 2)
    colours = [f"C{i}" for i in range(len(runs))]
    for (name, records), colour in zip(runs, colours):
        def plot(ax: Any, kind: str, key: str, style: str, label: str, scale: float = 1.0, **kw: Any) -> None:
            xs, ys = series(records, kind=kind, key=key)
            if xs:
                ax.plot(xs, [scale * y for y in ys], style, color=colour, label=label, linewidth=1, **kw)

        for key in LOSS_KEYS:
            plot(ax_loss, "train", key, LOSS_STYLES[key], f"{name} {key}")
        plot(ax_lr, "train", "lr", "-", name)
        for key in PSEUDO_KEYS:
            plot(ax_pl, "train", key, PSEUDO_STYLES[key], f"{name} {key}")
        plot(ax_miou, "eval", "miou", "o-", name, scale=100, markersize=3)
    for ax, title, ylabel in ((ax_loss, "loss terms", "loss"), (ax_lr, "learning rate (backbone)", "lr"),
                              (ax_pl, "pseudo-labels: coverage above tau, mean teacher confidence", "fraction"),
                              (ax_miou, "validation mIoU", "mIoU %")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    if ax_loss.lines:
        positive = all(np.all(np.asarray(line.get_ydata()) > 0) for line in ax_loss.lines)
        # Loss terms span decades; symlog keeps the exact zeros of loss_u before any pixel passes tau.
        ax_loss.set_yscale("log") if positive else ax_loss.set_yscale("symlog", linthresh=SYMLOG_LINTHRESH)
    fig.tight_layout()
    return fig


def run(args: argparse.Namespace) -> int:
    runs = []
    for d in args.run:
        records = read_metrics(Path(d))
        if not records:
            raise VisualizeError(f"--run '{d}': metrics.jsonl is empty (the run logged nothing yet)")
        runs.append((Path(d).name, records))
    out = Path(args.out)
    save_figure(curves_figure(runs), out)
    print(f"{out} ({', '.join(name for name, _ in runs)})")
    return 0
