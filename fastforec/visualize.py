"""`fastforec visualize latent|curves`: the paper's latent images, and a run's training curves.

    fastforec visualize latent --checkpoint runs/forec [runs/rec] --input img1.jpg img2.jpg --out fig.png
    fastforec visualize curves --run runs/forec [runs/rec] --out curves.png

Latent images (paper eq. 2, Fig. 1/4): the reconstruction is a 1x1 conv of the features entering
the reconstruction decoder's last layer, ``rec = up(W @ latent + b)``, so each of the 256 feature
channels is an image the decoder mixes into RGB. We show the K channels that matter most, chosen
by the norm of their column of W (how strongly they enter the reconstruction) or by their
spatial activation variance, next to the input, the segmentation and the reconstruction, one row
per input and one column group per checkpoint (e.g. rec vs forec side by side).

Besides the PNG, ``latent`` writes the arrays behind it next to the figure (``fig.npz``: input,
full latent map, W, b, reconstruction, segmentation and chosen channels per checkpoint and
input) so that the figure can be checked or re-plotted. Plots use matplotlib's Figure API with
the Agg canvas directly: headless, and no pyplot global state.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fastforec.atomic import atomic_path, atomic_write_bytes
from fastforec.errors import UserError

Selection = Literal["weight", "variance"]
SELECTIONS = ("weight", "variance")
DEFAULT_CHANNELS = 6
DEFAULT_MAX_SIDE = 512  # inputs are downscaled to this longer side: panels need no more
PANEL_INCHES = 1.9
DPI = 100
LATENT_CMAP = "viridis"
# Curves: metrics.jsonl keys per panel (runlog.py record format).
LOSS_KEYS = ("loss", "loss_s", "loss_u", "loss_rec")
PSEUDO_KEYS = ("pl_coverage", "teacher_conf")
LOSS_STYLES = {"loss": "-", "loss_s": "--", "loss_u": ":", "loss_rec": "-."}
PSEUDO_STYLES = {"pl_coverage": "-", "teacher_conf": "--"}
SYMLOG_LINTHRESH = 1e-2


class VisualizeError(UserError, ValueError):
    """Bad input to a visualisation command; the message names the file and what to change."""


# ---------------------------------------------------------------------------------------------
# latent images: computation


@dataclass
class LatentView:
    """One checkpoint on one input: everything a figure row group shows."""

    latent: np.ndarray  # (C, h, w) features entering the last 1x1 conv (h, w = input / 4)
    aux: np.ndarray  # (3, H, W) reconstruction in [0,1]-ish, or (1, H, W) fg/bg logit
    seg: np.ndarray  # (H, W) argmax class ids


@dataclass
class CheckpointViews:
    name: str
    method: str
    aux_kind: str  # "rgb" or "fgbg"
    weight: np.ndarray  # (out, C) of the last 1x1 conv
    bias: np.ndarray  # (out,)
    palette: list[list[int]]
    views: list[LatentView]
    channels: list[int]  # chosen channels, most important first


def classifier_weights(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, C) and b (out,) of the reconstruction decoder's last 1x1 conv."""
    conv = model.aux_head.classifier
    return conv.weight.detach()[:, :, 0, 0], conv.bias.detach()


def recombine(latent: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Paper eq. 2: the auxiliary output from the latent images, ``up(W @ latent + b)``; latent
    (B, C, h, w) -> (B, out, *size)."""
    mixed = torch.einsum("oc,bchw->bohw", weight, latent) + bias[None, :, None, None]
    return F.interpolate(mixed, size=tuple(size), mode="bilinear", align_corners=False)


def select_channels(weight: np.ndarray, latents: Sequence[np.ndarray], *, k: int, by: Selection) -> list[int]:
    """The ``k`` most important latent channels, most important first.

    ``weight``: a channel's column norm in W is how much of it reaches the output. ``variance``:
    its spatial variance, averaged over the inputs (flat channels carry no image).
    """
    if by == "weight":
        score = np.linalg.norm(weight, axis=0)
    elif by == "variance":
        score = np.mean([lat.reshape(lat.shape[0], -1).var(axis=1) for lat in latents], axis=0)
    else:
        raise VisualizeError(f"--select must be one of {', '.join(SELECTIONS)}, got {by!r}")
    k = min(k, score.shape[0])
    return [int(c) for c in np.argsort(-score, kind="stable")[:k]]


def load_input(path: Path, *, max_side: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], downscaled (antialiased) so the longer side is <= ``max_side``."""
    from fastforec.predict import load_image

    try:
        image = load_image(path)
    except UserError as e:
        raise VisualizeError(str(e)) from None
    h, w = image.shape[-2:]
    scale = max_side / max(h, w) if max_side > 0 else 1.0
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    return image


def list_inputs(inputs: Sequence[str]) -> list[Path]:
    from fastforec.predict import list_inputs as expand

    files: list[Path] = []
    for item in inputs:
        try:
            files.extend(expand(Path(item)))
        except UserError as e:
            raise VisualizeError(str(e)) from None
    return files


@torch.no_grad()
def checkpoint_views(path: str, images: Sequence[torch.Tensor], *, k: int, by: Selection) -> CheckpointViews:
    from fastforec.inference import load_trained_model

    model, cfg, dataset = load_trained_model(path, weights="student")
    if model.aux_head is None:
        raise VisualizeError(f"checkpoint '{path}' (method {cfg.method.name}) has no reconstruction decoder, so it "
                             f"has no latent images; use a rec, forec or fgbg run")
    views = []
    for image in images:
        out = model(image, return_latent=True)
        aux = out["rec"] if "rec" in out else out["fgbg"]
        views.append(LatentView(latent=out["latent"][0].numpy(), aux=aux[0].numpy(),
                                seg=out["seg"][0].argmax(0).numpy()))
    weight, bias = classifier_weights(model)
    channels = select_channels(weight.numpy(), [v.latent for v in views], k=k, by=by)
    return CheckpointViews(name=_checkpoint_name(path), method=cfg.method.name, aux_kind=model.aux_kind,
                           weight=weight.numpy(), bias=bias.numpy(), palette=dataset["palette"], views=views,
                           channels=channels)


def _checkpoint_name(path: str) -> str:
    """A short label: the run directory's name, or run/step_N for a checkpoint inside one."""
    p = Path(path)
    if p.is_dir():
        return p.resolve().name
    if p.parent.name == "checkpoints":
        return f"{p.parent.parent.name}/{p.stem}"
    return p.stem


# ---------------------------------------------------------------------------------------------
# latent images: figure


def _hwc(chw: np.ndarray) -> np.ndarray:
    return np.clip(np.transpose(chw, (1, 2, 0)), 0.0, 1.0)


def _normalise(channel: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] per channel and image: latent channels have arbitrary ranges."""
    lo, hi = float(channel.min()), float(channel.max())
    return (channel - lo) / (hi - lo) if hi > lo else np.zeros_like(channel)


def _aux_panel(view: LatentView, kind: str) -> tuple[np.ndarray, str]:
    if kind == "rgb":
        return _hwc(view.aux), "reconstruction"
    return 1.0 / (1.0 + np.exp(-view.aux[0])), "fg probability"


def _panel(ax: Any, image: np.ndarray, title: str | None, *, cmap: str | None = None) -> None:
    ax.imshow(image, cmap=cmap, interpolation="nearest", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def latent_figure(inputs: Sequence[tuple[str, torch.Tensor]], groups: Sequence[CheckpointViews], *,
                  select: Selection) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 1 + sum(2 + len(g.channels) for g in groups)
    rows = len(inputs)
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + 0.4), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for r, (name, image) in enumerate(inputs):
        _panel(axes[r, 0], _hwc(image[0].numpy()), "input" if r == 0 else None)
        axes[r, 0].set_ylabel(name, fontsize=7)
        c = 1
        for g in groups:
            view = g.views[r]
            palette = np.asarray(g.palette, dtype=np.float64) / 255.0
            first = r == 0
            seg = palette[np.clip(view.seg, 0, len(palette) - 1)]
            _panel(axes[r, c], seg, f"{g.name}\nsegmentation" if first else None)
            aux, label = _aux_panel(view, g.aux_kind)
            _panel(axes[r, c + 1], aux, f"{g.name}\n{label}" if first else None, cmap="gray" if aux.ndim == 2 else None)
            for j, ch in enumerate(g.channels):
                _panel(axes[r, c + 2 + j], _normalise(view.latent[ch]), f"latent {ch}" if first else None,
                       cmap=LATENT_CMAP)
            c += 2 + len(g.channels)
    ranking = {"weight": "norm of their last-conv weights", "variance": "activation variance"}[select]
    fig.suptitle(f"latent images: channels entering the reconstruction decoder's last 1x1 conv, ranked by {ranking}",
                 fontsize=8)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, out: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out, buf.getvalue())


def save_arrays(out: Path, inputs: Sequence[tuple[str, torch.Tensor]], groups: Sequence[CheckpointViews],
                *, select: Selection) -> Path:
    """``out`` with suffix .npz: keys ``input{i}``, ``c{g}_weight``, ``c{g}_bias``,
    ``c{g}_channels``, ``c{g}_i{i}_latent|aux|seg``, and ``meta`` (JSON)."""
    arrays: dict[str, np.ndarray] = {f"input{i}": img[0].numpy() for i, (_, img) in enumerate(inputs)}
    for g, group in enumerate(groups):
        arrays[f"c{g}_weight"], arrays[f"c{g}_bias"] = group.weight, group.bias
        arrays[f"c{g}_channels"] = np.asarray(group.channels, dtype=np.int64)
        for i, view in enumerate(group.views):
            arrays[f"c{g}_i{i}_latent"], arrays[f"c{g}_i{i}_aux"], arrays[f"c{g}_i{i}_seg"] = (
                view.latent, view.aux, view.seg.astype(np.int64))
    meta = {"inputs": [name for name, _ in inputs], "select": select,
            "checkpoints": [{"name": g.name, "method": g.method, "aux_kind": g.aux_kind} for g in groups]}
    arrays["meta"] = np.asarray(json.dumps(meta))
    path = out.with_suffix(".npz")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def run_latent(args: argparse.Namespace) -> int:
    if args.channels < 1:
        raise VisualizeError(f"--channels must be >= 1, got {args.channels}")
    files = list_inputs(args.input)
    inputs = [(f.name, load_input(f, max_side=args.max_side)) for f in files]
    groups = [checkpoint_views(path, [img for _, img in inputs], k=args.channels, by=args.select)
              for path in args.checkpoint]
    out = Path(args.out)
    save_figure(latent_figure(inputs, groups, select=args.select), out)
    arrays = save_arrays(out, inputs, groups, select=args.select)
    print(f"{out} ({len(inputs)} inputs x {len(groups)} checkpoints, {args.channels} latent channels by "
          f"{args.select}); arrays in {arrays}")
    return 0


# ---------------------------------------------------------------------------------------------
# curves


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


def curves_figure(runs: Sequence[tuple[str, list[dict[str, Any]]]]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7.5), dpi=DPI)
    FigureCanvasAgg(fig)
    (ax_loss, ax_lr), (ax_pl, ax_miou) = fig.subplots(2, 2)
    colours = [f"C{i}" for i in range(len(runs))]
    for (name, records), colour in zip(runs, colours):
        for key in LOSS_KEYS:
            xs, ys = series(records, kind="train", key=key)
            if xs:
                ax_loss.plot(xs, ys, LOSS_STYLES[key], color=colour, label=f"{name} {key}", linewidth=1)
        xs, ys = series(records, kind="train", key="lr")
        if xs:
            ax_lr.plot(xs, ys, color=colour, label=name, linewidth=1)
        for key in PSEUDO_KEYS:
            xs, ys = series(records, kind="train", key=key)
            if xs:
                ax_pl.plot(xs, ys, PSEUDO_STYLES[key], color=colour, label=f"{name} {key}", linewidth=1)
        xs, ys = series(records, kind="eval", key="miou")
        if xs:
            ax_miou.plot(xs, [100 * y for y in ys], "o-", color=colour, label=name, markersize=3, linewidth=1)
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


def run_curves(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latent", help="latent images next to input, segmentation and reconstruction")
    lat.add_argument("--checkpoint", nargs="+", required=True,
                     help="one or two (or more) checkpoints or run directories, shown side by side")
    lat.add_argument("--input", nargs="+", required=True, help="image files or directories of images")
    lat.add_argument("--out", required=True, help="figure (PNG); the arrays go next to it as .npz")
    lat.add_argument("--channels", type=int, default=DEFAULT_CHANNELS, help="latent channels per checkpoint")
    lat.add_argument("--select", choices=SELECTIONS, default="weight",
                     help="rank channels by the norm of their last-conv weights, or by activation variance")
    lat.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                     help="downscale inputs to this longer side (0 = keep)")
    cur = sub.add_parser("curves", help="loss terms, lr, pseudo-label coverage and mIoU from metrics.jsonl")
    cur.add_argument("--run", nargs="+", required=True, help="run directories (overlaid)")
    cur.add_argument("--out", required=True, help="figure (PNG)")


def run(args: argparse.Namespace) -> int:
    try:
        return run_latent(args) if args.what == "latent" else run_curves(args)
    except VisualizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
