"""`fastforec visualize latent`: the paper's latent images (eq. 2, Fig. 1/4).

    fastforec visualize latent --checkpoint runs/forec [runs/rec] --input img1.jpg img2.jpg --out fig.png

The reconstruction is a 1x1 conv of the features entering the reconstruction decoder's last
layer, ``rec = up(W @ latent + b)``, so each of the 256 feature channels is an image the decoder
mixes into RGB. We show the K channels that matter most, chosen by the norm of their column of W
(how strongly they enter the reconstruction) or by their spatial activation variance, next to
the input, the segmentation and the reconstruction, one row per input and one column group per
checkpoint (e.g. rec vs forec side by side).

Besides the PNG, the arrays behind it are written next to the figure (``fig.npz``: input, full
latent map, W, b, reconstruction, segmentation and chosen channels per checkpoint and input) so
that the figure can be checked or re-plotted.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from fastforec.atomic import atomic_path
from fastforec.image_files import list_inputs, load_image
from fastforec.inference import load_trained_model
from fastforec.visualize import SELECTIONS, Selection, VisualizeError
from fastforec.visualize.figure import agg_figure, save_figure

PANEL_INCHES = 1.9
LATENT_CMAP = "viridis"


# ---------------------------------------------------------------------------------------------
# computation


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
    image = load_image(path)
    h, w = image.shape[-2:]
    scale = max_side / max(h, w) if max_side > 0 else 1.0
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    return image


def input_files(inputs: Sequence[str]) -> list[Path]:
    """The image files of ``--input``: files as given, directories expanded."""
    return [f for item in inputs for f in list_inputs(Path(item))]


@torch.no_grad()
def checkpoint_views(path: str, images: Sequence[torch.Tensor], *, k: int, by: Selection) -> CheckpointViews:
    model, cfg, dataset = load_trained_model(path, weights="student")
    if model.aux_head is None:
        raise VisualizeError(f"checkpoint '{path}' (method {cfg.method.label}) has no reconstruction decoder, so it "
                             f"has no latent images; use a rec, forec or fgbg run")
    views = []
    for image in images:
        out = model(image, return_latent=True)
        aux = out["rec"] if "rec" in out else out["fgbg"]
        views.append(LatentView(latent=out["latent"][0].numpy(), aux=aux[0].numpy(),
                                seg=out["seg"][0].argmax(0).numpy()))
    weight, bias = classifier_weights(model)
    channels = select_channels(weight.numpy(), [v.latent for v in views], k=k, by=by)
    return CheckpointViews(name=_checkpoint_name(path), method=cfg.method.label, aux_kind=model.aux_kind,
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
# figure


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
                  select: Selection) -> Figure:
    cols = 1 + sum(2 + len(g.channels) for g in groups)
    rows = len(inputs)
    fig = agg_figure((cols * PANEL_INCHES, rows * PANEL_INCHES + 0.4))
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


def run(args: argparse.Namespace) -> int:
    if args.channels < 1:
        raise VisualizeError(f"--channels must be >= 1, got {args.channels}")
    files = input_files(args.input)
    inputs = [(f.name, load_input(f, max_side=args.max_side)) for f in files]
    groups = [checkpoint_views(path, [img for _, img in inputs], k=args.channels, by=args.select)
              for path in args.checkpoint]
    out = Path(args.out)
    save_figure(latent_figure(inputs, groups, select=args.select), out)
    arrays = save_arrays(out, inputs, groups, select=args.select)
    shown = sorted({len(g.channels) for g in groups})  # fewer than --channels where a latent has fewer
    capped = "" if shown == [args.channels] else f" (--channels {args.channels}: all the latent has)"
    print(f"{out} ({len(inputs)} inputs x {len(groups)} checkpoints, {'/'.join(map(str, shown))} latent channels by "
          f"{args.select}{capped}); arrays in {arrays}")
    return 0
