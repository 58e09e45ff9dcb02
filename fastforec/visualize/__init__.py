"""`fastforec visualize latent|curves`: two figures, each its own module.

    fastforec visualize latent --checkpoint runs/forec [runs/rec] --input img1.jpg img2.jpg --out fig.png
    fastforec visualize curves --run runs/forec [runs/rec] --out curves.png

``latent`` (fastforec/visualize/latent.py): the paper's latent images (Fig. 1/4) of one or more
checkpoints. ``curves`` (fastforec/visualize/curves.py): a run's training curves from its
metrics.jsonl. This module holds their arguments and dispatches.
"""

from __future__ import annotations

import argparse
from typing import Literal

from fastforec.errors import UserError

NAME = "visualize"
HELP = "latent images (paper Fig. 1/4) and training curves"

Selection = Literal["weight", "variance"]
SELECTIONS = ("weight", "variance")
DEFAULT_CHANNELS = 6
DEFAULT_MAX_SIDE = 512  # inputs are downscaled to this longer side: panels need no more


class VisualizeError(UserError, ValueError):
    """Bad input to a visualisation command; the message names the file and what to change."""


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
    """A VisualizeError is a UserError: `fastforec.cli.main` prints it and exits with 2."""
    # lazy: torch and matplotlib; keeps `fastforec --help` and argument errors instant
    if args.what == "latent":
        from fastforec.visualize import latent

        return latent.run(args)
    from fastforec.visualize import curves

    return curves.run(args)
