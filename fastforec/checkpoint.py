"""Checkpoint files: atomic writes, safe loads, keep the last k.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), written with
``torch.save`` to a temporary name, fsync-ed and renamed: a crash leaves the previous checkpoint
intact. Loading uses ``torch.load(weights_only=True)``, which refuses arbitrary objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from fastforec.atomic import atomic_path

CHECKPOINT_GLOB = "step_*.pt"
_STEP_RE = re.compile(r"step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not a fastforec checkpoint."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def rank_file(path: str | Path, rank: int) -> Path:
    """The per-rank companion of a checkpoint (optimizer partition, data position, RNG)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}.pt")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip/pickle/EOF errors all mean the same thing to the user
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({type(e).__name__}: {e}); "
                              f"use an earlier checkpoint of the run") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a fastforec checkpoint (top level is {type(state).__name__})")
    return state


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in ``directory``, oldest first (by step number)."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob(CHECKPOINT_GLOB) if (m := _STEP_RE.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ``checkpoints/`` latest, or its own latest)."""
    path = Path(path)
    if path.is_dir():
        for d in (path / "checkpoints", path):
            if (latest := latest_checkpoint(d)) is not None:
                return latest
        raise CheckpointError(f"no checkpoint ({CHECKPOINT_GLOB}) in '{path}'")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    return path


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted paths."""
    old = list_checkpoints(directory)[:-keep] if keep > 0 else []
    for p in old:
        # the shared file first: without it the rank files are never read
        p.unlink(missing_ok=True)
        for companion in p.parent.glob(f"{p.stem}.rank*.pt"):
            companion.unlink(missing_ok=True)
    return old
