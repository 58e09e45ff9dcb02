"""`fastforec eval` and `fastforec predict` on a checkpoint of a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer_support import clean_env, run_train, tiny_config, write_config

FASTFOREC = [sys.executable, "-m", "fastforec.cli"]


@pytest.fixture(scope="module")
def trained(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("evalrun")
    cfg = write_config(tmp / "cfg.json", tiny_config(shards, train={"max_steps": 2}, eval={"model": "both"}))
    run_dir = tmp / "run"
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, run_dir


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(FASTFOREC + args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300)


def test_eval_reproduces_the_training_evaluation(trained: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, run_dir = trained
    out = tmp_path / "eval.json"
    proc = _cli(["eval", "--config", str(cfg), "--checkpoint", str(run_dir), "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    want = json.loads((run_dir / "results.json").read_text())
    assert got["mode"] == "whole"
    assert got["miou"] == pytest.approx(want["miou_last"], abs=1e-9)
    assert "mIoU" in proc.stdout

    teacher = tmp_path / "teacher.json"
    proc = _cli(["eval", "--config", str(cfg), "--checkpoint", str(run_dir), "--weights", "teacher",
                 "--json", str(teacher)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(teacher.read_text())["miou"] == pytest.approx(want["models"]["teacher"]["miou_last"], abs=1e-9)

    sliding = tmp_path / "sliding.json"
    proc = _cli(["eval", "--config", str(cfg), "--checkpoint", str(run_dir), "--mode", "sliding",
                 "--json", str(sliding)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(sliding.read_text())["mode"] == "sliding"


def test_eval_of_a_corrupt_checkpoint_is_a_clear_error(trained: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, run_dir = trained
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = _cli(["eval", "--config", str(cfg), "--checkpoint", str(bad)], tmp_path)
    assert proc.returncode == 2 and "corrupt" in proc.stderr and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_predict_writes_palette_masks_and_overlays(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = trained
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (40, 56)), ("b.png", (33, 47))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / name)
    out = tmp_path / "pred"
    proc = _cli(["predict", "--checkpoint", str(run_dir), "--input", str(images), "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    mask = Image.open(out / "b.png")
    assert mask.mode == "P" and mask.size == (47, 33)
    assert np.asarray(mask).max() < 21
    assert Image.open(out / "a_overlay.png").size == (56, 40)

    proc = _cli(["predict", "--checkpoint", str(run_dir), "--input", str(tmp_path / "missing"), "--out", str(out)],
                tmp_path)
    assert proc.returncode == 2 and "missing" in proc.stderr


def test_the_dataset_kind_travels_in_the_checkpoint(trained: tuple[Path, Path]) -> None:
    # predict has no manifest: the one evaluation-mode rule reads the dataset kind from here
    from fastforec.checkpoint_files import latest_checkpoint, load_checkpoint
    from fastforec.evaluate import resolve_eval_mode

    _, run_dir = trained
    dataset = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["dataset"]
    assert dataset["kind"] == "voc" and resolve_eval_mode("auto", dataset["kind"]) == "whole"


def test_eval_takes_its_settings_from_the_checkpoint_and_never_needs_pretrained(trained: tuple[Path, Path],
                                                                                 tmp_path: Path) -> None:
    cfg, run_dir = trained
    want = json.loads((run_dir / "results.json").read_text())
    out = tmp_path / "eval.json"
    proc = _cli(["eval", "--checkpoint", str(run_dir), "--json", str(out)], tmp_path)  # no --config
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "settings: the checkpoint's own config" in proc.stderr
    assert json.loads(out.read_text())["miou"] == pytest.approx(want["miou_last"], abs=1e-9)
    # --set overrides the checkpoint's settings
    proc = _cli(["eval", "--checkpoint", str(run_dir), "--set", "eval.mode=sliding", "--json", str(out)], tmp_path)
    assert proc.returncode == 0 and json.loads(out.read_text())["mode"] == "sliding", proc.stderr[-3000:]
    assert "settings: the checkpoint's own config with --set eval.mode=sliding" in proc.stderr
    # a recipe-style config naming ImageNet weights that are not here: eval does not need them
    recipe = json.loads(Path(cfg).read_text())
    recipe["model"]["pretrained"] = "pretrained/resnet101.pth"
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(recipe))
    proc = _cli(["eval", "--config", str(recipe_path), "--checkpoint", str(run_dir), "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"settings: --config {recipe_path}" in proc.stderr
