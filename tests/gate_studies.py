"""The gate scripts in tools/ as modules, and finished study runs written by hand for them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    """tools/NAME.py imported as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_run(study: Path, method: str, budget: str, seed: int, student: float, teacher: float | None = None) -> None:
    """A finished run's results.json as `fastforec ablate` lays it out (mIoU as fractions)."""
    run = study / "runs" / f"{method}_b{budget}_s{seed}"
    run.mkdir(parents=True)
    models = {"student": {"miou_last": student}}
    if teacher is not None:
        models["teacher"] = {"miou_last": teacher}
    (run / "results.json").write_text(json.dumps({"miou_last": student, "miou_best": student, "models": models}))
