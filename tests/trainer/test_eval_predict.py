"""`fastforec eval` and `fastforec predict` on a checkpoint of a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_peer_checkpoints import miou  # numpy mIoU, independent of fastforec.metrics
from trainer_support import CPU_ONLY, clean_env, run_train, tiny_config, write_config

from fastforec.checkpoint_files import latest_checkpoint, load_checkpoint
from fastforec.config import config_from_dict, load_config
from fastforec.data import ValData
from fastforec.data.manifest import Manifest
from fastforec.models import build_model
from tests import child_process
from tests.test_sliding_window import numpy_sliding

FASTFOREC = [sys.executable, "-m", "fastforec.cli"]


@pytest.fixture(scope="module")
def trained(shards: Path, module_tmp: Path) -> tuple[Path, Path]:
    tmp = module_tmp
    cfg = write_config(tmp / "cfg.json", tiny_config(shards, train={"max_steps": 2}, eval={"model": "both"}))
    run_dir = tmp / "run"
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp, env=CPU_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, run_dir


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # on the CPU on any machine: the mIoU computed here (on the CPU) must match to 1e-9
    return child_process.run(FASTFOREC + args, cwd=cwd, env=clean_env(**CPU_ONLY), capture_output=True, text=True)


def _network(run_dir: Path, weights: str) -> torch.nn.Module:
    """The checkpoint's network, built here from its config and state dict."""
    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    cfg = config_from_dict(state["config"])
    model = build_model(cfg.model, num_classes=state["dataset"]["num_classes"],
                        reconstruction=cfg.method.reconstruction if weights == "student" else None)
    model.load_state_dict(state[weights])
    return model.eval()


@pytest.fixture(scope="module")
def reference(trained: tuple[Path, Path], shards: Path) -> dict[str, float]:
    """mIoU of the val split computed here, numpy mIoU of: the student's and the teacher's argmax on
    whole images, and the student's in the default sliding-window protocol restated in numpy
    (test_sliding_window.numpy_sliding: windows every 2/3 window, the last one at the border,
    logits averaged; a 48 crop on 64 x 80 images: rows 0, 16, columns 0, 32)."""
    cfg, run_dir = trained
    data_cfg = load_config(cfg).data
    student, teacher = _network(run_dir, "student"), _network(run_dir, "teacher")
    window = data_cfg.crop_size
    preds: dict[str, list[np.ndarray]] = {"student": [], "teacher": [], "sliding": []}
    labels = []
    for batch in ValData(Manifest.load(shards), data_cfg, batch_size=1, rank=0, world_size=1, device="cpu"):
        image = batch["image"]
        with torch.no_grad():
            preds["student"].append(student(image)["seg"].argmax(1)[0].numpy())
            preds["teacher"].append(teacher(image)["seg"].argmax(1)[0].numpy())
        preds["sliding"].append(numpy_sliding(student, image[0].numpy(), window, int(window * 2 / 3)))
        labels.append(batch["label"][0].numpy())
    return {k: miou(v, labels, 21) for k, v in preds.items()}


def test_eval_scores_the_checkpoint_as_computed_here(trained: tuple[Path, Path], reference: dict[str, float],
                                                     tmp_path: Path) -> None:
    cfg, run_dir = trained
    out = tmp_path / "eval.json"
    proc = _cli(["eval", "--config", str(cfg), "--checkpoint", str(run_dir), "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    want = json.loads((run_dir / "results.json").read_text())
    assert got["mode"] == "whole" and got["precision"] == want["precision"] == "fp32"
    assert got["miou"] == pytest.approx(reference["student"], abs=1e-9)
    assert got["miou"] == pytest.approx(want["miou_last"], abs=1e-9)  # and training's own evaluation agrees
    assert "mIoU" in proc.stdout

    teacher = tmp_path / "teacher.json"
    proc = _cli(["eval", "--config", str(cfg), "--checkpoint", str(run_dir), "--weights", "teacher",
                 "--json", str(teacher)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(teacher.read_text())["miou"]
    assert got == pytest.approx(reference["teacher"], abs=1e-9)
    assert got == pytest.approx(want["models"]["teacher"]["miou_last"], abs=1e-9)


def test_eval_in_sliding_windows_is_the_documented_protocol(trained: tuple[Path, Path], reference: dict[str, float],
                                                            tmp_path: Path) -> None:
    cfg, run_dir = trained
    sliding = tmp_path / "sliding.json"
    proc = _cli(["eval", "--config", str(cfg), "--checkpoint", str(run_dir), "--mode", "sliding",
                 "--json", str(sliding)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(sliding.read_text())
    assert (got["mode"], got["sliding_protocol"]) == ("sliding", "border_aligned")  # the default
    assert got["miou"] == pytest.approx(reference["sliding"], abs=1e-9)


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
    # each kind in its own folder (not Cityscapes: no label ids)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "overlay/a.png", "overlay/b.png", "palette/a.png", "palette/b.png"]
    assert f"2 images predicted: palette, overlay PNGs in {out / 'overlay'}, {out / 'palette'}" in proc.stderr
    # each mask is the student's argmax on the image (whole-image mode on VOC), in the dataset's palette
    model = _network(run_dir, "student")
    palette = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["dataset"]["palette"]
    for name in ("a", "b"):
        source = next(images.glob(f"{name}.*"))
        rgb = np.asarray(Image.open(source).convert("RGB"))
        with torch.no_grad():
            want = model(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255)["seg"].argmax(1)[0]
        mask = Image.open(out / "palette" / f"{name}.png")
        assert mask.mode == "P" and mask.size == rgb.shape[1::-1]
        assert np.array_equal(np.asarray(mask), want.numpy())
        assert mask.getpalette()[:3 * len(palette)] == [v for colour in palette for v in colour]
        assert Image.open(out / "overlay" / f"{name}.png").size == rgb.shape[1::-1]
    proc = _cli(["predict", "--checkpoint", str(run_dir), "--input", str(images), "--out", str(tmp_path / "only"),
                 "--format", "palette"], tmp_path)
    assert proc.returncode == 0 and sorted(p.name for p in (tmp_path / "only").iterdir()) == ["palette"]
    proc = _cli(["predict", "--checkpoint", str(run_dir), "--input", str(images), "--out", str(tmp_path / "ids"),
                 "--format", "palette,labelids"], tmp_path)
    assert proc.returncode == 2 and "--format labelids" in proc.stderr and not (tmp_path / "ids").exists()
    proc = _cli(["predict", "--checkpoint", str(run_dir), "--input", str(images), "--out", str(tmp_path / "x"),
                 "--format", "masks"], tmp_path)
    assert proc.returncode == 2 and "masks is not a kind of output" in proc.stderr

    proc = _cli(["predict", "--checkpoint", str(run_dir), "--input", str(tmp_path / "missing"), "--out", str(out)],
                tmp_path)
    assert proc.returncode == 2 and "missing" in proc.stderr


def test_the_dataset_kind_travels_in_the_checkpoint(trained: tuple[Path, Path]) -> None:
    # predict has no manifest: the one evaluation-mode rule reads the dataset kind from here
    from fastforec.evaluate import resolve_eval_mode

    _, run_dir = trained
    dataset = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["dataset"]
    assert dataset["kind"] == "voc" and resolve_eval_mode("auto", dataset["kind"]) == "whole"


def test_eval_takes_its_settings_from_the_checkpoint_and_never_needs_pretrained(trained: tuple[Path, Path],
                                                                                 reference: dict[str, float],
                                                                                 tmp_path: Path) -> None:
    cfg, run_dir = trained
    out = tmp_path / "eval.json"
    proc = _cli(["eval", "--checkpoint", str(run_dir), "--json", str(out)], tmp_path)  # no --config
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "settings: the checkpoint's own config" in proc.stderr
    assert json.loads(out.read_text())["miou"] == pytest.approx(reference["student"], abs=1e-9)
    # --set overrides the checkpoint's settings
    proc = _cli(["eval", "--checkpoint", str(run_dir), "--set", "eval.mode=sliding", "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["mode"] == "sliding" and got["miou"] == pytest.approx(reference["sliding"], abs=1e-9)
    assert "settings: the checkpoint's own config with --set eval.mode=sliding" in proc.stderr
    # a recipe-style config naming ImageNet weights that are not here: eval does not need them
    recipe = json.loads(Path(cfg).read_text())
    recipe["model"]["pretrained"] = "pretrained/resnet101.pth"
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(recipe))
    proc = _cli(["eval", "--config", str(recipe_path), "--checkpoint", str(run_dir), "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"settings: --config {recipe_path}" in proc.stderr
    assert json.loads(out.read_text())["miou"] == pytest.approx(reference["student"], abs=1e-9)
