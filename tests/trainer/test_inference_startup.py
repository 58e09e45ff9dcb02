"""eval and predict of a checkpoint run on plain torch: no DeepSpeed import (and so none of its
banners or its `deepspeed_shm_comm` C++ extension build), no process group; eval scores by default
the model the run scored (``eval.model``) and says which in its output and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from trainer_support import clean_env, run_train, tiny_config, write_config

from tests import child_process

# -X importtime: every module the command imports is listed on stderr ("import time: ... | name")
FASTFOREC_TRACED = [sys.executable, "-X", "importtime", "-m", "fastforec.cli"]
IMPORT_LINE = "import time:"


@pytest.fixture(scope="module")
def teacher_run(shards: Path, module_tmp: Path) -> Path:
    """A tiny FOrec run whose training scored its EMA teacher (eval.model = teacher)."""
    tmp = module_tmp
    cfg = write_config(tmp / "cfg.json", tiny_config(shards, train={"max_steps": 2}, eval={"model": "teacher"}))
    run_dir = tmp / "run"
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _traced(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, list[str], str]:
    """(process, modules imported, output other than the import trace)."""
    proc = child_process.run(FASTFOREC_TRACED + args, cwd=cwd, env=clean_env(), capture_output=True, text=True)
    modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith(IMPORT_LINE)]
    rest = "\n".join([proc.stdout] + [line for line in proc.stderr.splitlines() if not line.startswith(IMPORT_LINE)])
    return proc, modules, rest


def _no_deepspeed(modules: list[str], output: str) -> None:
    assert modules, "no import trace: -X importtime did not reach the command"
    pulled = [m for m in modules if m.split(".")[0] == "deepspeed"]
    assert not pulled, f"imported DeepSpeed: {pulled[:5]}"
    assert "deepspeed" not in output.lower(), output[-2000:]
    assert "real_accelerator" not in output and "cpp_extension" not in output, output[-2000:]


def test_eval_imports_no_deepspeed_and_scores_what_the_run_scored(teacher_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    proc, modules, rest = _traced(["eval", "--checkpoint", str(teacher_run), "--json", str(out)], tmp_path)
    assert proc.returncode == 0, rest[-3000:]
    _no_deepspeed(modules, rest)
    assert json.loads(out.read_text())["weights"] == "teacher"
    assert "weights: teacher (what the run scored" in rest
    # the number the run reported at its end (the teacher's) is the one eval gives by default
    scored = json.loads((teacher_run / "results.json").read_text())
    assert json.loads(out.read_text())["miou"] == pytest.approx(scored["miou_last"], abs=1e-9)

    student = tmp_path / "student.json"
    proc, _, rest = _traced(["eval", "--checkpoint", str(teacher_run), "--weights", "student", "--json",
                             str(student)], tmp_path)
    assert proc.returncode == 0, rest[-3000:]
    assert json.loads(student.read_text())["weights"] == "student"


def test_predict_imports_no_deepspeed(teacher_run: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 30), (120, 60, 30)).save(photos / "a.jpg")
    proc, modules, rest = _traced(["predict", "--checkpoint", str(teacher_run), "--input", str(photos),
                                   "--out", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 0, rest[-3000:]
    _no_deepspeed(modules, rest)
    assert list((tmp_path / "out").rglob("a*.png"))
