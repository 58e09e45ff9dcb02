"""Figures of the visualize commands: matplotlib's Figure API on the Agg canvas directly
(headless, and no pyplot global state), saved as PNG under a temporary name."""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fastforec.atomic import atomic_write_bytes

DPI = 100


def agg_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out, buf.getvalue())
