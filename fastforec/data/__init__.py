"""Data side: manifest, shard reader, per-batch random draws, DALI pipelines.

``from fastforec.data import TrainData, ValData, resolve_device`` is the trainer's entry point;
the DALI-backed classes are imported lazily so that reading a manifest does not load DALI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainData", "ValData", "resolve_device"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fastforec.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'fastforec.data' has no attribute {name!r}")
