"""`fastforec pretrain` at a tiny size, run as a user would: data from `dataprep synth --preset
pretrain`, real training, the encoder file that `model.pretrained` takes, its provenance, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fastforec.cli import main
from fastforec.config import load_config
from fastforec.data.manifest import Manifest
from fastforec.models import build_model
from fastforec.pretrain import (
    ATTEMPTS_FILE,
    DATA_SPEC_FILE,
    ENCODER_FILE,
    ENCODER_FORMAT,
    PROVENANCE_FILE,
    tensors_sha256,
    write_encoder,
)
from tests import child_process
from tests.trainer.trainer_support import REPO, clean_env

STEPS = 4
DATA = ["--num-train", "8", "--num-val", "2", "--size", "48x48", "--data-seed", "3"]
SETS = ["data.crop_size=48", "data.batch_size=2", f"train.max_steps={STEPS}", "train.checkpoint_every=2",
        "train.keep_checkpoints=5", "train.log_every=1", "eval.batch_size=2"]


def _command(out: Path) -> list[str]:
    """The command as encoder.json spells it (every option, defaults included)."""
    cmd = ["fastforec", "pretrain", "--out", str(out), "--config", "sslbench_pretrain", *DATA]
    for item in SETS:
        cmd += ["--set", item]
    return cmd


def _pretrain(out: Path) -> None:
    argv = _command(out)[2:]
    proc = child_process.run([sys.executable, "-m", "fastforec.cli", "pretrain", *argv], cwd=REPO, env=clean_env(),
                             capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pretrained(module_tmp: Path) -> Path:
    out = module_tmp / "pretrain"
    _pretrain(out)
    return out


def test_encoder_file_holds_the_encoder_with_checksum_and_command(pretrained: Path) -> None:
    encoder, record = pretrained / ENCODER_FILE, json.loads((pretrained / PROVENANCE_FILE).read_text())
    assert record["sha256"] == _sha256(encoder) and record["format"] == ENCODER_FORMAT
    assert record["tensors_sha256"] == tensors_sha256(load_file(str(encoder)))
    assert record["command"] == _command(pretrained)
    source = Path(record["source"]["checkpoint"])
    assert record["source"]["step"] == STEPS and record["source"]["sha256"] == _sha256(source)
    assert record["data"]["shards_sha256"] == Manifest.load(pretrained / "data" / "shards").identity
    assert [a["resumed"] for a in record["training"]["attempts"]] == [False]
    assert record["cpu"]["model"] and record["code"]["commit"]
    # the code that trained it, read when the attempt started; the tree's state at export beside it
    assert record["code"] == record["training"]["attempts"][-1]["code"] and record["export_code"]["commit"]
    with safe_open(str(encoder), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == ENCODER_FORMAT and json.loads(meta["command"]) == _command(pretrained)
    assert meta["source_sha256"] == record["source"]["sha256"]
    tensors = load_file(str(encoder))
    assert "conv1.weight" in tensors and any(k.startswith("layer4.") for k in tensors)
    assert not any(k.startswith(("backbone.", "decoder", "head", "fc.")) for k in tensors)
    student = torch.load(source, weights_only=True)["student"]
    assert all(torch.equal(t, student[f"backbone.body.{k}"]) for k, t in tensors.items())
    # the data: every training image labeled, nothing unlabeled; its parameters recorded
    manifest = Manifest.load(pretrained / "data" / "shards")
    assert manifest.split("labeled").num_samples == 8 and manifest.split("unlabeled").num_samples == 0
    assert json.loads((pretrained / "data" / DATA_SPEC_FILE).read_text())["num_train"] == 8


def test_model_pretrained_takes_it_and_changes_the_initial_weights(pretrained: Path) -> None:
    encoder = pretrained / ENCODER_FILE
    cfg = load_config("sslbench", [f"model.pretrained={encoder}"])
    torch.manual_seed(0)
    scratch = build_model(cfg.model, num_classes=21, reconstruction=None)
    torch.manual_seed(0)
    loaded = build_model(cfg.model, num_classes=21, reconstruction=None, with_pretrained=True, show_pretrained=False)
    tensors = load_file(str(encoder))
    body = loaded.backbone.body.state_dict()
    assert set(tensors) == set(body)
    assert all(torch.equal(t, body[k]) for k, t in tensors.items())
    changed = [k for k, t in scratch.backbone.body.state_dict().items()
               if t.is_floating_point() and not torch.equal(t, body[k])]
    assert "conv1.weight" in changed and "layer4.1.conv2.weight" in changed
    # the decoder is not part of the file: the same seed gives the same fresh decoder
    assert all(torch.equal(t, loaded.state_dict()[k]) for k, t in scratch.state_dict().items()
               if not k.startswith("backbone."))


def test_the_provenance_names_the_code_that_trained_not_the_code_that_exported(pretrained: Path,
                                                                              tmp_path: Path) -> None:
    # a commit made while the pretraining ran (hours on a CPU) must not be credited with it
    trained_by = {"commit": "0" * 40, "dirty": False}
    attempt = {"started": "2026-01-01T00:00:00+0000", "seconds": 1.0, "resumed": False, "exit_code": 0,
               "code": trained_by}
    write_encoder(pretrained / "run", tmp_path, command=["fastforec", "pretrain"], attempts=[attempt])
    record = json.loads((tmp_path / PROVENANCE_FILE).read_text())
    assert record["code"] == trained_by and record["export_code"]["commit"] != trained_by["commit"]
    # the same weights whatever the metadata: the tensors' checksum of the original file
    assert record["tensors_sha256"] == json.loads((pretrained / PROVENANCE_FILE).read_text())["tensors_sha256"]


def test_rerun_resumes_a_stopped_pretraining(pretrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "pretrain"
    shutil.copytree(pretrained, out)
    # as if the first attempt had been stopped after its step-2 checkpoint
    for path in (out / "run" / "checkpoints").glob(f"step_{STEPS:08d}*.pt"):
        path.unlink()
    for name in (ENCODER_FILE, PROVENANCE_FILE):
        (out / name).unlink()
    (out / "run" / "results.json").unlink()
    _pretrain(out)
    attempts = json.loads((out / "run" / ATTEMPTS_FILE).read_text())
    assert [a["resumed"] for a in attempts] == [False, True] and all(a["exit_code"] == 0 for a in attempts)
    first, resumed = load_file(str(pretrained / ENCODER_FILE)), load_file(str(out / ENCODER_FILE))
    assert resumed.keys() == first.keys() and all(torch.equal(first[k], resumed[k]) for k in first)
    assert [a["resumed"] for a in json.loads((out / PROVENANCE_FILE).read_text())["training"]["attempts"]] == \
        [False, True]
    # once finished, the same command trains no more: it writes the encoder file again
    (out / ENCODER_FILE).unlink()
    assert main(["pretrain", *_command(out)[2:]]) == 0
    assert len(json.loads((out / "run" / ATTEMPTS_FILE).read_text())) == 2
    assert _sha256(out / ENCODER_FILE) == json.loads((out / PROVENANCE_FILE).read_text())["sha256"]


def test_checkpoint_option_exports_only(pretrained: Path, tmp_path: Path) -> None:
    assert main(["pretrain", "--checkpoint", str(pretrained / "run"), "--out", str(tmp_path / "x")]) == 0
    record = json.loads((tmp_path / "x" / PROVENANCE_FILE).read_text())
    assert record["command"] == ["fastforec", "pretrain", "--checkpoint", str(pretrained / "run"),
                                 "--out", str(tmp_path / "x")]
    assert record["training"] is None and not (tmp_path / "x" / "data").exists()
    a, b = load_file(str(pretrained / ENCODER_FILE)), load_file(str(tmp_path / "x" / ENCODER_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("extra", "says"), [
    (["--checkpoint", "no/such/run"], "'no/such/run'"),
    (["--num-train", "0"], "--num-train"),
    (["--set", "train.no_such_key=1"], "train.no_such_key"),
    (["--config", "no_such_config"], "no_such_config"),
])
def test_bad_input_is_one_line_and_exit_2(extra: list[str], says: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["pretrain", "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err and "Traceback" not in err
    assert not (tmp_path / "out" / "data").exists()  # refused before any data is made


def test_other_data_options_are_refused_naming_the_file(pretrained: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["pretrain", *_command(pretrained)[2:], "--num-train", "9"]) == 2
    err = capsys.readouterr().err
    assert DATA_SPEC_FILE in err and "num_train=8" in err and "9" in err


def test_another_training_into_a_finished_run_is_refused(pretrained: Path, capsys: pytest.CaptureFixture) -> None:
    before = _sha256(pretrained / ENCODER_FILE)
    assert main(["pretrain", *_command(pretrained)[2:], "--set", f"train.max_steps={STEPS + 2}"]) == 2
    err = capsys.readouterr().err
    assert f"train.max_steps={STEPS}" in err and "another --out" in err
    assert _sha256(pretrained / ENCODER_FILE) == before
