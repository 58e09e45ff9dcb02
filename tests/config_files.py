"""Shipped config files read without fastforec.config: JSON objects with ``extends`` (a file
name or a list of them, relative to the file) merged key by key, the file's own keys last, as
fastforec.config documents it. The expected values of the config tests come from here, so
that they are not the loader's own output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolved(path: Path) -> dict[str, Any]:
    """The file's settings with everything it extends merged in (``extends`` removed)."""
    data = json.loads(path.read_text())
    parents = data.pop("extends", [])
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _merge(merged, resolved(path.parent / parent))
    return _merge(merged, data)


def shipped() -> list[Path]:
    return sorted((p for p in CONFIGS.rglob("*.json") if p.parent.name != "base"), key=lambda p: p.stem)


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"data.crop_size": 512, ...}: every non-dict value under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
