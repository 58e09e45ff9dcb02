"""`fastforec export`: the segmentation network of a real checkpoint as safetensors and ONNX.

ONNX is checked against PyTorch with onnxruntime on other batch sizes and image sizes than the
export traced; the safetensors file must carry everything `fastforec predict` needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from trainer_support import clean_env, run_train, tiny_config, write_config

from fastforec.checkpoint_files import load_checkpoint, resolve_checkpoint
from fastforec.inference import load_trained_model
from tests import child_process

FASTFOREC = [sys.executable, "-m", "fastforec.cli"]
MAX_ABS_DIFF = 1e-4  # fp32 onnxruntime vs PyTorch


@pytest.fixture(scope="module")
def run_dir(shards: Path, module_tmp: Path) -> Path:
    tmp = module_tmp
    cfg = write_config(tmp / "cfg.json", tiny_config(shards, train={"max_steps": 2}))
    proc = run_train(["--config", str(cfg), "--run-dir", str(tmp / "run")], cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return child_process.run(FASTFOREC + args, cwd=cwd, env=clean_env(), capture_output=True, text=True)


@pytest.mark.parametrize("weights", ["student", "teacher"])
def test_safetensors_holds_the_segmentation_network_and_its_metadata(run_dir: Path, tmp_path: Path,
                                                                     weights: str) -> None:
    from safetensors import safe_open

    out = tmp_path / f"{weights}.safetensors"
    proc = _cli(["export", "--checkpoint", str(run_dir), "--format", "safetensors", "--weights", weights,
                 "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary left behind
    ckpt = load_checkpoint(resolve_checkpoint(run_dir))
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    # the checkpoint's network minus the reconstruction decoder, tensor for tensor
    expected = {k: v for k, v in ckpt[weights].items() if not k.startswith("aux_head.")}
    assert ckpt["student"].keys() - expected.keys() and all(k.startswith("aux_head.") for k in
                                                            ckpt["student"].keys() - expected.keys())
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert meta["format"] == "fastforec-segmentation-v1" and meta["weights"] == weights
    assert json.loads(meta["config"]) == ckpt["config"]
    dataset = json.loads(meta["dataset"])
    assert dataset["class_names"] == ckpt["dataset"]["class_names"] and len(dataset["class_names"]) == 21
    assert dataset["palette"] == ckpt["dataset"]["palette"]


def test_onnx_matches_pytorch_with_dynamic_batch_and_size(run_dir: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    proc = _cli(["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["weights"] == "student" and json.loads(meta["dataset"])["num_classes"] == 21
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "image" and outp.name == "logits"
    assert isinstance(inp.shape[0], str) and inp.shape[1] == 3 and all(isinstance(d, str) for d in inp.shape[2:])

    model, _, _ = load_trained_model(run_dir, weights="student")
    gen = torch.Generator().manual_seed(0)
    for shape in ((1, 3, 48, 48), (3, 3, 45, 62), (2, 3, 97, 50)):
        x = torch.rand(*shape, generator=gen)
        with torch.no_grad():
            want = model(x)["seg"].numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == want.shape == (shape[0], 21, *shape[2:])
        assert np.abs(got - want).max() < MAX_ABS_DIFF, (shape, np.abs(got - want).max())


def test_predict_accepts_the_safetensors_export(run_dir: Path, tmp_path: Path) -> None:
    export = tmp_path / "model.safetensors"
    assert _cli(["export", "--checkpoint", str(run_dir), "--format", "safetensors", "--out", str(export)],
                tmp_path).returncode == 0
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name, size in (("a.jpg", (40, 56)), ("b.png", (33, 47))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / name)
    masks = {}
    for source in (run_dir, export):
        out = tmp_path / f"pred_{Path(source).name}"
        proc = _cli(["predict", "--checkpoint", str(source), "--input", str(images), "--out", str(out)], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        masks[source] = {str(p.relative_to(out)): np.asarray(Image.open(p)) for p in sorted(out.rglob("*.png"))}
    assert list(masks[export]) == ["overlay/a.png", "overlay/b.png", "palette/a.png", "palette/b.png"]
    for name in masks[export]:
        assert np.array_equal(masks[export][name], masks[run_dir][name]), name

    proc = _cli(["predict", "--checkpoint", str(export), "--weights", "teacher", "--input", str(images),
                 "--out", str(tmp_path / "x")], tmp_path)
    assert proc.returncode == 2 and "holds the student weights only" in proc.stderr and "Traceback" not in proc.stderr


def test_export_errors_are_clear_and_write_nothing(run_dir: Path, tmp_path: Path) -> None:
    proc = _cli(["export", "--checkpoint", str(tmp_path / "nothing"), "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx")], tmp_path)
    assert proc.returncode == 2 and "nothing' does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli(["export", "--checkpoint", str(run_dir), "--format", "safetensors", "--out",
                 str(tmp_path / "m.onnx")], tmp_path)
    assert proc.returncode == 2 and "must end with '.safetensors'" in proc.stderr
    not_export = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(not_export))
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    proc = _cli(["predict", "--checkpoint", str(not_export), "--input", str(tmp_path / "in"), "--out",
                 str(tmp_path / "p")], tmp_path)
    assert proc.returncode == 2 and "is not a fastforec export" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "plain.safetensors"]
