"""Files and numbers given where they do not belong are named for what they are, with what to give
instead (issue 30, items 9-12): a pickle that would run code, a plain pickle, our own ONNX export
as --checkpoint or model.pretrained, our own safetensors export as model.pretrained (which works),
and `bench` numbers that its benchmarks would misread. Real files, the real command line."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastforec.cli import main
from fastforec.models import build_model
from fastforec.models.backbones import FASTFOREC_ENCODER_PREFIX, PretrainedError, ResNetBackbone
from tests.export_files import CLASSES, tiny_config, write_export

REPO = Path(__file__).resolve().parents[1]
NOT_TENSORS = "holds Python objects other than tensors and plain values"


class RunsCode:
    """Unpickling this runs ``touch <marker>``: the file must be refused, never executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _fastforec(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # a child process: torch's warnings reach stderr as a user sees them (pytest would catch them)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastforec.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(tmp_path_factory.mktemp("onnx") / "model.onnx", onnx=True)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_named_and_never_run(writer: str, image: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    evil = tmp_path / "model.pth"
    if writer == "torch.save":
        torch.save({"student": RunsCode(marker)}, evil)
    else:
        with open(evil, "wb") as f:
            pickle.dump({"student": RunsCode(marker)}, f)
    proc = _fastforec(["predict", "--checkpoint", str(evil), "--input", str(image), "--out", str(tmp_path / "p")],
                      tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"'{evil}' {NOT_TENSORS}" in proc.stderr and "(its pickle imports posix.system)" in proc.stderr
    assert "corrupt" not in proc.stderr and "weights_only" not in proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr  # the one error line only
    assert proc.stderr.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "p").exists()


def test_a_plain_pickle_of_tensors_is_named_as_a_plain_pickle(tmp_path: Path) -> None:
    weights = tmp_path / "resnet.pth"
    with open(weights, "wb") as f:
        pickle.dump({"conv1.weight": torch.zeros(64, 3, 7, 7)}, f)
    with pytest.raises(PretrainedError, match="is a plain Python pickle .*written by pickle.dump.*torch.save"):
        ResNetBackbone(name="resnet18", output_stride=16).load_pretrained(weights)


def test_a_numpy_archive_given_as_the_checkpoint_is_not_called_corrupt(image: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    archive = tmp_path / "lat.npz"
    np.savez(archive, input0=np.zeros(3), input1=np.ones(2))
    assert main(["predict", "--checkpoint", str(archive), "--input", str(image), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"'{archive}' is a zip archive of other files (input0.npy, input1.npy) (a NumPy .npz)" in err, err
    assert "corrupt" not in err and not (tmp_path / "p").exists()


def test_onnx_export_as_checkpoint_says_what_it_is_and_what_to_give(onnx_export: Path, image: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    for command in (["predict", "--input", str(image), "--out", str(tmp_path / "p")], ["eval"],
                    ["export", "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")]):
        assert main([command[0], "--checkpoint", str(onnx_export), *command[1:]]) == 2
        err = capsys.readouterr().err
        assert f"--checkpoint '{onnx_export}' is an ONNX export (`fastforec export --format onnx`)" in err, err
        assert "`fastforec export --format safetensors` file" in err and "corrupt" not in err
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_as_pretrained_says_what_to_give(onnx_export: Path) -> None:
    with pytest.raises(PretrainedError, match=r"model.pretrained '.*model.onnx' is an ONNX export .*give the "
                                              r"checkpoint or run directory it was exported from"):
        build_model(tiny_config(pretrained=str(onnx_export)).model, num_classes=len(CLASSES), reconstruction=None,
                    with_pretrained=True)


def test_our_safetensors_export_initialises_the_encoder(tmp_path: Path) -> None:
    # README: fine-tuning from a fastforec run works with model.pretrained=<file>; an export is one
    export = write_export(tmp_path / "run.safetensors", seed=7)
    cfg = tiny_config(pretrained=str(export))
    model = build_model(cfg.model, num_classes=len(CLASSES), reconstruction="rgb", with_pretrained=True,
                        show_pretrained=False)
    from safetensors.torch import load_file

    encoder = {k[len(FASTFOREC_ENCODER_PREFIX):]: v for k, v in load_file(export).items()
               if k.startswith(FASTFOREC_ENCODER_PREFIX)}
    own = model.backbone.body.state_dict()
    assert encoder and encoder.keys() == own.keys()
    assert all(torch.equal(own[k], v) for k, v in encoder.items())


@pytest.mark.parametrize("what, option, value", [("data", "--crop", "0"), ("data", "--batches", "-1"),
                                                 ("data", "--batches", "0"), ("step", "--batches", "-1"),
                                                 ("data", "--threads", "0"), ("step", "--crop", "-5")])
def test_bench_numbers_out_of_range_are_refused_naming_the_flag(what: str, option: str, value: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    code = main(["bench", "--what", what, "--config", "synth_demo", option, value,
                 "--json", str(tmp_path / "b.json")])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {option} must be >= " in err and f"got {value}" in err, err
    assert list(tmp_path.iterdir()) == []
