"""A peer's checkpoint and a folder of photos are enough: predict and export read no dataset (the
class table is the dataset kind's, dataprep's), with a recipe or with the source's default recipe
recognised from the file (class count -> VOC / Cityscapes, encoder layout -> backbone), and the
settings line says what was assumed. eval of a peer's file records the weights its source publishes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import unimatch_v2_reference as ref  # noqa: E402
from trainer_support import clean_env  # noqa: E402

from fastforec.labels import CITYSCAPES_PALETTE, VOC_PALETTE  # noqa: E402
from tests import child_process  # noqa: E402

FASTFOREC = [sys.executable, "-m", "fastforec.cli"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return child_process.run(FASTFOREC + args, cwd=cwd, env=clean_env(), capture_output=True, text=True)


def _v2_file(path: Path, nclass: int) -> Path:
    """A UniMatch V2 best.pth as its code saves it (DDP-prefixed ViT-S DPT, model and model_ema)."""
    torch.manual_seed(3)
    shapes = ref.model_shapes("small", nclass)
    ddp = lambda s: {f"module.{k}": v for k, v in s.items()}  # noqa: E731
    torch.save({"model": ddp(ref.random_state(shapes)), "model_ema": ddp(ref.random_state(shapes)), "epoch": 59},
               path)
    return path


def _photos(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(photos / "street.jpg")
    return photos


def _colours(png: Path) -> set[tuple[int, int, int]]:
    img = Image.open(png)
    assert img.mode == "P"
    pal = img.getpalette()
    return {tuple(pal[3 * i:3 * i + 3]) for i in np.unique(np.asarray(img))}


@pytest.mark.parametrize("nclass,recipe,palette", [(21, "unimatch_v2_vits_voc_classic_92", VOC_PALETTE),
                                                   (19, "unimatch_v2_vits_cityscapes_1_16", CITYSCAPES_PALETTE)])
def test_predict_a_peers_file_alone_with_no_dataset(tmp_path: Path, nclass: int, recipe: str, palette) -> None:
    ckpt = _v2_file(tmp_path / "best.pth", nclass)
    photos = _photos(tmp_path)
    # no data/ anywhere under the working directory: the recipe's data.root does not exist
    proc = _cli(["predict", "--checkpoint", str(ckpt), "--input", str(photos), "--out", str(tmp_path / "out")],
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"settings: recipe {recipe}, assumed from '{ckpt}'" in proc.stderr
    mask = tmp_path / "out" / "palette" / "street.png"
    assert _colours(mask) <= set(palette)

    # with a recipe named, the same masks: the recipe is what was assumed
    proc = _cli(["predict", "--config", recipe, "--checkpoint", f"unimatch_v2:{ckpt}", "--input", str(photos),
                 "--out", str(tmp_path / "named")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"settings: --config {recipe}" in proc.stderr
    named = tmp_path / "named" / "palette" / "street.png"
    assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(named)))


def test_export_a_peers_file_with_no_dataset(tmp_path: Path) -> None:
    ckpt = _v2_file(tmp_path / "best.pth", 21)
    out = tmp_path / "v2.safetensors"
    proc = _cli(["export", "--checkpoint", f"unimatch_v2:{ckpt}", "--format", "safetensors", "--out", str(out)],
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(teacher," in proc.stdout  # UniMatch V2 publishes its EMA model's numbers
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["weights"] == "teacher"
    assert "aeroplane" in json.dumps(meta)


def test_an_unknown_class_count_asks_for_the_recipe(tmp_path: Path) -> None:
    ckpt = _v2_file(tmp_path / "best.pth", 5)
    proc = _cli(["predict", "--checkpoint", f"unimatch_v2:{ckpt}", "--input", str(_photos(tmp_path)),
                 "--out", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "5 classes, neither VOC's 21 nor Cityscapes' 19" in proc.stderr and "give --config" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
