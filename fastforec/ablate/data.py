"""A study's data: the dataprep commands that make it (raw synthetic tree, then per budget the
split lists and the shards of each image format), run once per study directory and resumable."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

from fastforec.ablate.plan import ALL, AblationError, DataSpec, variant
from fastforec.atomic import atomic_write_json
from fastforec.dataprep_cli import run_dataprep
from fastforec.errors import UserError


def data_dirs(out: Path, budget: str, image_format: str = "") -> tuple[Path, Path]:
    """(split lists, shards) of a budget (and image format): the formats share the split lists."""
    return out / "data" / f"splits_{budget}", out / "data" / f"shards_{variant(budget, image_format)}"


def read_study(out: Path) -> dict[str, Any] | None:
    """The data parameters of the study in ``out`` (its data/study.json), or None when there is none."""
    path = out / "data" / "study.json"
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        raise AblationError(f"'{path}' is not valid JSON; it records the study's data: remove the study folder's "
                            f"data/ to make it again, or use another --out") from None
    return saved if isinstance(saved, dict) else None


def check_study(out: Path, spec: DataSpec) -> None:
    """Refuse to mix datasets: an existing study.json must describe the same data."""
    path = out / "data" / "study.json"
    old = read_study(out)
    if old is None:
        return
    defaults = {f.name: f.default for f in fields(DataSpec)}  # MISSING where a key has no default
    for key, value in asdict(spec).items():
        if old.get(key, defaults[key]) != value:  # keys added since: a study from before has their defaults
            raise AblationError(f"'{path}' was made with {key}={old.get(key)!r}, this run asks for {value!r}; use "
                                f"another --out, or the same data options to continue that study")


def prepare_data(out: Path, spec: DataSpec, budgets: Sequence[str], console: Any) -> dict[str, Path]:
    """The shard directory of every budget (and format: keys are ``variant()``), running whatever
    dataprep command is missing (resumable: dataprep itself skips finished shards)."""
    raw_cmd, budget_cmds = data_commands(out, spec, budgets)
    marker = out / "data" / "study.json"
    if not marker.is_file():
        _dataprep(raw_cmd, console)
        atomic_write_json(marker, asdict(spec))  # written last: the raw tree is complete
    shards = {}
    for budget in budgets:
        split_cmd, *convert_cmds = budget_cmds[budget]  # one conversion per format
        dirs = [data_dirs(out, budget, fmt)[1] for fmt in spec.formats]
        missing = [cmd for cmd, d in zip(convert_cmds, dirs) if not (d / "manifest.json").is_file()]
        if missing:
            _dataprep(split_cmd, console)  # deterministic: every format gets the same lists
            for convert in missing:
                _dataprep(convert, console)
        shards.update({variant(budget, fmt): d for fmt, d in zip(spec.formats, dirs)})
    return shards


def _dataprep(argv: list[str], console: Any) -> None:
    console.print("dataprep " + " ".join(argv))
    try:
        run_dataprep(argv)
    except UserError as e:  # reported the way every other ablate error is
        raise AblationError(str(e)) from None


def data_commands(out: Path, spec: DataSpec, budgets: Sequence[str]) -> tuple[list[str], dict[str, list[list[str]]]]:
    """The dataprep argument lists: the raw tree's, and each budget's (split lists + shards)."""
    raw = out / "data" / "raw"
    raw_cmd = ["synth", "--layout", spec.layout, "--out", str(raw), "--size", f"{spec.height}x{spec.width}",
               "--num-train", str(spec.num_train), "--num-val", str(spec.num_val), "--seed", str(spec.data_seed),
               "--quiet"]
    # sslbench: nested class-balanced budgets; scenes: a seeded random draw from the classic list
    how = ["--balanced"] if spec.preset == "sslbench" else ["--seed", str(spec.split_seed)]
    if spec.preset == "sslbench":
        raw_cmd += ["--preset", "sslbench"]
    per_budget = {}
    for b in budgets:
        split_dir = data_dirs(out, b)[0]
        labeled = str(spec.num_train) if b == ALL else b
        per_budget[b] = [["splits", "--root", str(raw), "--layout", spec.layout, "--labeled", labeled, *how,
                          "--out", str(split_dir)]]
        for fmt in spec.formats:
            convert = [spec.layout, "--root", str(raw), "--split-dir", str(split_dir),
                       "--out", str(data_dirs(out, b, fmt)[1]), "--quiet"]
            if fmt:
                quality = ["--jpeg-quality", str(spec.jpeg_quality)] if fmt == "jpg" else []
                convert += ["--image-format", fmt] + quality
            per_budget[b].append(convert)
    return raw_cmd, per_budget
