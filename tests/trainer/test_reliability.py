"""Issue 12, probed as a hostile but fair user would: diverging runs, flipped and torn checkpoints,
corrupted shards, bad settings and unwritable outputs. Each test does what the probe did and checks
the exit code, that the message names the file or key, the files on disk and the resumed losses.

(Killed runs and metrics.jsonl are in test_resume.py; dataprep's own inputs in tests/dataprep.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from equivalence_harness import make_batch
from trainer_support import read_jsonl, run_train, tiny_config, write_config

from fastforec.checkpoint_files import list_checkpoints, load_checkpoint
from fastforec.config import load_config
from fastforec.distributed import init_distributed
from fastforec.run_lock import LOCK_NAME
from fastforec.trainer import NonFiniteLossError, Trainer

LOSS_KEYS = ("loss", "loss_s", "loss_u", "loss_rec")
# errors that exist only on a machine without CUDA (there the setting is valid and the run trains)
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has no such error to report")


class Foreign:
    """A Python object pickled into a .pt file, as a foreign or malicious file would hold."""


def _train_in_process(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """fastforec/train.py's main() in this process: an exception that escaped it would fail the test
    (the traceback a user would see); a user error returns 2 with the message on stderr."""
    from fastforec.train import main

    code = main(args)
    return code, capsys.readouterr().err


def _flip_inside(path: Path, tensor: torch.Tensor) -> None:
    """Flip one bit inside the stored bytes of ``tensor`` (torch's zip reader checks no CRC)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().numpy().tobytes()
    at = bytes(data).find(raw)
    assert at >= 0, f"{path}: tensor bytes not found"
    data[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _files(directory: Path) -> dict[str, bytes]:
    """Every file's bytes, but the run lock's: each run that takes it writes its own PID there."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture(scope="module")
def finished(shards: Path, module_tmp: Path) -> tuple[Path, Path]:
    """A finished 4-step run with checkpoints at steps 2 and 4 (config, run directory)."""
    from fastforec.train import main

    tmp = module_tmp
    cfg = write_config(tmp / "cfg.json", tiny_config(shards, train={"max_steps": 4, "checkpoint_every": 2,
                                                                    "keep_checkpoints": 3}))
    run_dir = tmp / "run"
    assert main(["--config", str(cfg), "--run-dir", str(run_dir)]) == 0  # in this process: no start-up to pay
    return cfg, run_dir


@pytest.fixture(scope="module")
def world():
    return init_distributed()


# ---------------------------------------------------------------------------------------------
# 1. non-finite training


def test_diverging_run_keeps_the_last_finite_checkpoint_and_names_it(shards: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": 6, "checkpoint_every": 2}))
    for bad, expected in (("inf", "must be a finite number, got inf"), ("nan", "must be a finite number, got nan"),
                          ("1e38", "lr x head_lr_mult = 1e+39 is beyond the float32 range")):
        code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(tmp_path / "r0"),
                                       "--set", f"optim.lr={bad}"], capsys)
        assert code == 2 and f"optim.lr: {expected}" in err
    assert not (tmp_path / "r0").exists()

    # lr 1e6 with the gradient norm clipped at 1 (slow enough a divergence to have a checkpoint
    # before it): steps 1-2 stay finite (checkpoint at 2); step 3 turns the weights to NaN while
    # its own loss is still finite; step 4 stops the run before anything is saved from that state
    run_dir = tmp_path / "run"
    args = ["--config", str(cfg), "--run-dir", str(run_dir), "--set", "optim.lr=1e6",
            "--set", "deepspeed.gradient_clipping=1.0"]
    proc = run_train(args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    good = run_dir / "checkpoints" / "step_00000002.pt"
    assert "error: the weights became non-finite" in proc.stderr and "by step 3 with optim.lr=1000000.0" in proc.stderr
    assert f"The newest checkpoint, '{good}', holds the last finite state" in proc.stderr
    assert list_checkpoints(run_dir / "checkpoints") == [good]
    state = load_checkpoint(good)
    assert all(torch.isfinite(t).all() for part in ("student", "teacher") for t in state[part].values()
               if t.is_floating_point())
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]

    # that checkpoint resumes (and, the run being deterministic, diverges at the same step again)
    proc = run_train(args + ["--resume"], cwd=tmp_path)
    assert proc.returncode == 2 and f"resumed from {good} at step 2" in proc.stderr
    assert "by step 3 with optim.lr=1000000.0" in proc.stderr
    assert list_checkpoints(run_dir / "checkpoints") == [good]
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"] == [1, 2, 3]


def test_divergence_after_a_checkpoint_names_it_and_writes_nothing_newer(shards: Path, tmp_path: Path,
                                                                          world) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, method={"base": "mean_teacher", "aux": "none"}))
    tr = Trainer(load_config(cfg), run_dir=tmp_path / "run", dist=world)
    labeled, unlabeled = make_batch(0, 0, batch=2, crop=48, num_classes=tr.num_classes)
    assert tr.train_step(labeled, unlabeled) is not None
    good = tr.save_checkpoint()
    for group in tr.optimizer.param_groups:
        group["lr"] = float("inf")  # the next step makes the weights inf/NaN (its own loss is finite)
    assert tr.train_step(labeled, unlabeled) is not None
    assert tr.state.step == 2
    with pytest.raises(NonFiniteLossError) as exc:
        tr.save_checkpoint()
    assert f"The newest checkpoint, '{good}', holds the last finite state" in str(exc.value)
    with pytest.raises(NonFiniteLossError, match="the weights became non-finite"):
        tr.train_step(labeled, unlabeled)  # the next loss check stops the run as well
    assert list_checkpoints(tr.ckpt_dir) == [good]
    assert sorted(p.name for p in tr.ckpt_dir.iterdir()) == ["step_00000001.pt", "step_00000001.rank0.pt"]
    state = load_checkpoint(good)
    for part in ("student", "teacher"):
        assert all(torch.isfinite(t).all() for t in state[part].values() if t.is_floating_point())


# ---------------------------------------------------------------------------------------------
# 2. flipped bytes in checkpoints


def test_flipped_checkpoint_bytes_are_caught_and_resume_falls_back(finished: tuple[Path, Path], tmp_path: Path,
                                                                  shards: Path, capsys: pytest.CaptureFixture,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from fastforec.cli import main as fastforec

    cfg, original = finished
    run_dir = Path(shutil.copytree(original, tmp_path / "run"))
    ckpts = run_dir / "checkpoints"
    step2, step4 = ckpts / "step_00000002.pt", ckpts / "step_00000004.pt"
    want = torch.load(step4, weights_only=True)
    losses = {r["step"]: [r[k] for k in LOSS_KEYS] for r in read_jsonl(run_dir / "metrics.jsonl")
              if r["kind"] == "train"}

    # the shared file: predicting with it names the damage and the checkpoint to use instead
    pristine = step4.read_bytes()
    _flip_inside(step4, next(t for t in want["student"].values() if t.numel() > 1000))
    image = next((shards.parent / "raw" / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "pred"
    assert fastforec(["predict", "--checkpoint", str(step4), "--input", str(image), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint '{step4}' is corrupt: its content does not match its checksum" in err
    assert f"use the earlier checkpoint '{step2}'" in err
    assert not out.exists()
    step4.write_bytes(pristine)

    # a per-rank file: --resume skips that checkpoint, says so, and redoes steps 3-4 exactly
    rank0 = ckpts / "step_00000004.rank0.pt"
    own = torch.load(rank0, weights_only=True)
    _flip_inside(rank0, next(s["momentum_buffer"] for s in own["optimizer"]["base"]["state"].values()
                             if s["momentum_buffer"].numel() > 1000))
    # in this process, as `finished` ran: the same threads, so the same bits
    with caplog.at_level("WARNING", logger="fastforec.checkpoint"):
        code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(run_dir), "--resume"], capsys)
    assert code == 0, err
    assert "skipped 1 damaged checkpoint(s)" in caplog.text and f"resuming from '{step2}'" in caplog.text
    assert f"'{rank0}' is corrupt" in caplog.text
    got = load_checkpoint(step4)
    exact = not torch.cuda.is_available()  # bit for bit is the CPU's promise; a GPU's last bits may differ
    for part in ("student", "teacher"):
        for name, t in want[part].items():
            if exact:
                assert torch.equal(t, got[part][name]), f"{part}.{name} differs after the fallback resume"
            else:
                torch.testing.assert_close(t, got[part][name], rtol=1e-3, atol=1e-4)
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4]
    resumed = {r["step"]: [r[k] for k in LOSS_KEYS] for r in records if r["kind"] == "train"}
    assert resumed == (losses if exact else {s: pytest.approx(v, rel=1e-3) for s, v in losses.items()})


def test_when_every_checkpoint_is_damaged_no_damaged_one_is_suggested(finished: tuple[Path, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    cfg, original = finished
    run_dir = Path(shutil.copytree(original, tmp_path / "run"))
    for ckpt in (run_dir / "checkpoints").glob("step_????????.pt"):
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = _files(run_dir)
    code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(run_dir), "--resume"], capsys)
    assert code == 2 and "every checkpoint in" in err and "is damaged, so there is nothing to resume from" in err
    assert "step_00000002.pt" in err and "step_00000004.pt" in err
    assert "use the earlier checkpoint" not in err and "--resume step" not in err
    assert _files(run_dir) == before


def test_resume_from_a_named_damaged_checkpoint_stops_without_falling_back(finished: tuple[Path, Path],
                                                                          tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    # --resume PATH: the user chose that file, so its damage stops the run (with --resume alone the
    # newest intact checkpoint would be taken instead, test above); the earlier one is suggested
    cfg, original = finished
    run_dir = Path(shutil.copytree(original, tmp_path / "run"))
    ckpts = run_dir / "checkpoints"
    step2, step4, rank0 = ckpts / "step_00000002.pt", ckpts / "step_00000004.pt", ckpts / "step_00000004.rank0.pt"
    for damaged in (step4, rank0):
        pristine = damaged.read_bytes()
        state = torch.load(damaged, weights_only=True)
        tensors = state["student"].values() if damaged == step4 else \
            (s["momentum_buffer"] for s in state["optimizer"]["base"]["state"].values())
        _flip_inside(damaged, next(t for t in tensors if t.numel() > 1000))
        before = _files(run_dir)
        code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(run_dir), "--resume", str(step4)],
                                      capsys)
        assert code == 2 and f"'{damaged}' is corrupt" in err, err
        assert f"use the earlier checkpoint '{step2}'" in err
        assert "resuming from" not in err and "resumed from" not in err and "skipped" not in err
        assert _files(run_dir) == before  # nothing trained, nothing written
        damaged.write_bytes(pristine)


# ---------------------------------------------------------------------------------------------
# 3. corrupted shards


def _copy_shards(shards: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shards, tmp_path / "shards"))


def _jpeg_members(root: Path, shard: str) -> list[tuple[int, int, str]]:
    """(offset, size, name) of every JPEG in a shard, from its DALI index."""
    lines = (root / shard).with_suffix(".idx").read_text().splitlines()[1:]
    members = []
    for line in lines:
        f = line.split()
        members += [(int(f[i + 1]), int(f[i + 2]), f[i + 3]) for i in range(0, len(f), 4) if f[i] == "jpg"]
    return members


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_flipped_bytes_inside_a_shard_jpeg_stop_training_before_it_starts(shards: Path, tmp_path: Path) -> None:
    root = _copy_shards(shards, tmp_path)
    offset, size, name = _jpeg_members(root, "unlabeled-000000.tar")[0]
    tar = root / "unlabeled-000000.tar"
    data = bytearray(tar.read_bytes())
    for i in range(offset + size // 2, offset + size // 2 + 8):
        data[i] ^= 0x5A  # the JPEG still decodes (libjpeg warns), into a wrong image
    tar.write_bytes(bytes(data))
    cfg = write_config(tmp_path / "cfg.json", tiny_config(root))
    run_dir = tmp_path / "run"
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"shard '{tar}' has sha256" in proc.stderr and "its bytes changed since dataprep wrote it" in proc.stderr
    assert f"dataprep verify {root}" in proc.stderr
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()


def test_manifest_and_size_damage_is_named(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy_shards(shards, tmp_path)
    cfg = write_config(tmp_path / "cfg.json", tiny_config(root))
    args = ["--config", str(cfg), "--run-dir", str(tmp_path / "run")]

    # a sha256 of zeros in the manifest is checked like any other
    _edit_manifest(root, lambda m: m["splits"]["val"]["shards"][0].update(sha256="0" * 64))
    code, err = _train_in_process(args, capsys)
    assert code == 2 and f"shard '{root / 'val-000000.tar'}' has sha256" in err and f"says {'0' * 64}" in err

    # with verify_shards=size a truncated shard is still caught (and the sha256 is not read)
    tar = root / "labeled-000000.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])
    code, err = _train_in_process(args + ["--set", "data.verify_shards=size"], capsys)
    assert code == 2 and f"shard '{tar}' is {tar.stat().st_size} bytes, the manifest says" in err
    assert "sha256" not in err
    shutil.copy(shards / "labeled-000000.tar", tar)

    # a wrong split-level count
    _edit_manifest(root, lambda m: m["splits"]["unlabeled"].update(num_samples=999))
    code, err = _train_in_process(args + ["--set", "data.verify_shards=size"], capsys)
    assert code == 2 and "split 'unlabeled' says num_samples=999 but its shards hold 16" in err
    assert not (tmp_path / "run").exists()


def test_an_undecodable_image_in_training_names_shard_and_sample(shards: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    root = _copy_shards(shards, tmp_path)
    tar = root / "unlabeled-000000.tar"
    data = bytearray(tar.read_bytes())
    members = _jpeg_members(root, tar.name)
    for offset, _, _ in members:  # half of the unlabeled images: the first batches must meet one
        data[offset: offset + 64] = bytes(64)
    tar.write_bytes(bytes(data))
    cfg = write_config(tmp_path / "cfg.json", tiny_config(root, data={"verify_shards": "size"}))
    code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2, err
    names = [name for _, _, name in members]
    assert f"shard '{tar}' is corrupt: image '" in err
    named = err.split("image '", 1)[1].split("'", 1)[0]
    assert named in names and f"(sample '{named.split('.')[0]}')" in err
    assert "not a recognisable image" in err and "BytesIO" not in err


# ---------------------------------------------------------------------------------------------
# 6./7. user errors after the config is loaded: one line, exit 2, nothing written


@pytest.mark.parametrize("overrides, expected", [
    (["data.batch_size=64"], "fewer than one batch of 64 on each of 1 ranks; lower data.batch_size"),
    pytest.param(["data.device=gpu"], "data.device: 'gpu' requested but CUDA is not available", marks=CPU_ONLY),
    pytest.param(['deepspeed.fp16={"enabled": true}'],
                 "deepspeed.fp16: DeepSpeed's fp16 mode (16-bit weights with loss scaling) needs a CUDA GPU",
                 marks=CPU_ONLY),
    (['deepspeed.zero_optimization={"stage": 3}'],
     "deepspeed.zero_optimization.stage: 3 is not supported; use 0, 1 or 2"),
    (["method.fg_classes=[1,2"], "method.fg_classes: '[1,2' is not valid JSON"),
    (["method.fg_classes=[99]"], "method.fg_classes: class ids [99] do not exist: the dataset in"),
], ids=["batch_too_large", "gpu_without_cuda", "fp16_on_cpu", "zero3", "broken_list", "unknown_class"])
def test_user_errors_are_one_line_and_exit_2(overrides: list[str], expected: str, shards: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards))
    args = ["--config", str(cfg), "--run-dir", str(tmp_path / "run")]
    code, err = _train_in_process(args + [a for o in overrides for a in ("--set", o)], capsys)
    assert code == 2
    assert err.startswith("error: ") and expected in err, err
    assert "stage >= 1" not in err and "JSONDecodeError" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, expected", [
    ("data.batch_size=4", "was trained with data.batch_size=2, the config says 4"),
    ("model.decoder_channels=32", "was trained with model.decoder_channels=256, the config says 32"),
    ("optim.lr=0.001", "was trained with optim.lr=0.01, the config says 0.001"),
    ("data.crop_size=64", "was trained with data.crop_size=48, the config says 64"),
    ("train.seed=1", "was trained with train.seed=0, the config says 1"),
])
def test_resume_with_changed_settings_names_the_key(override: str, expected: str, finished: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture) -> None:
    cfg, run_dir = finished
    before = _files(run_dir)
    code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(run_dir), "--resume", "--set", override],
                                  capsys)
    assert code == 2 and expected in err, err
    assert "size mismatch" not in err
    assert _files(run_dir) == before


def test_resume_with_another_number_of_ranks_is_refused(finished: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from fastforec.checkpoint_files import save_checkpoint

    cfg, original = finished
    run_dir = Path(shutil.copytree(original, tmp_path / "run"))
    newest = run_dir / "checkpoints" / "step_00000004.pt"
    save_checkpoint({**load_checkpoint(newest), "world_size": 2}, newest)  # as 2 ranks would have written it
    before = _files(run_dir)
    code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(run_dir), "--resume"], capsys)
    assert code == 2 and f"'{newest}' was written by 2 ranks; resume with the same number of processes (now 1)" in err
    assert _files(run_dir) == before


def test_resume_on_other_data_of_the_same_size_is_refused(finished: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """Same number of samples per split (so the same data position arithmetic), other images: the
    manifest's checksum tells them apart."""
    from tests.shard_sets import make_shards

    cfg, run_dir = finished
    other = make_shards(tmp_path / "other", layout="voc", num_train=24, num_labeled=8, num_val=4, size=(64, 80), seed=7)
    before = _files(run_dir)
    code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(run_dir), "--resume", "--set",
                                   f"data.root={other}"], capsys)
    assert code == 2 and "was trained on other data (shards " in err, err
    assert "start a new run with model.pretrained=<this checkpoint>" in err
    assert _files(run_dir) == before


def test_unwritable_outputs_and_foreign_files_are_named(finished: tuple[Path, Path], shards: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from fastforec.cli import main as fastforec

    cfg, run_dir = finished
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    code, err = _train_in_process(["--config", str(cfg), "--run-dir", str(blocker / "run")], capsys)
    assert code == 2 and f"--run-dir '{blocker / 'run'}' lies under '{blocker}', which is a regular file" in err

    image = next((shards.parent / "raw" / "JPEGImages").glob("*.jpg"))
    assert fastforec(["predict", "--checkpoint", str(run_dir), "--input", str(image), "--out", str(blocker)]) == 2
    assert f"--out '{blocker}' is a regular file, not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"

    # a file output that names a directory: refused before the evaluation / export, naming it
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert fastforec(["eval", "--checkpoint", str(run_dir), "--json", str(folder)]) == 2
    assert f"--json '{folder}' is a directory; --json takes a file path" in capsys.readouterr().err
    out = tmp_path / "x.safetensors"
    out.mkdir()
    assert fastforec(["export", "--checkpoint", str(run_dir), "--format", "safetensors", "--out", str(out)]) == 2
    assert f"--out '{out}' is a directory; --out takes a file path" in capsys.readouterr().err
    code, err = _train_in_process(["--config", str(folder), "--run-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and f"config file '{folder}' is a directory; --config takes a .json config file" in err
    assert list(folder.iterdir()) == [] and list(out.iterdir()) == []

    # a checkpoint's per-rank file given for the checkpoint: named for what it is
    part = next((run_dir / "checkpoints").glob("step_*.rank0.pt"))
    assert fastforec(["eval", "--checkpoint", str(part)]) == 2
    shared = part.with_name(part.name.replace(".rank0", ""))
    assert f"'{part}' is rank 0's part of checkpoint '{shared.name}'" in capsys.readouterr().err

    # 8. a pickle that is not tensors: said for what it is, and never "use weights_only=False"
    evil = tmp_path / "model.pt"
    torch.save({"student": Foreign()}, evil)
    assert fastforec(["predict", "--checkpoint", str(evil), "--input", str(image), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"'{evil}' holds Python objects other than tensors" in err
    assert "not a fastforec checkpoint or weight file" in err
    assert "weights_only" not in err and "corrupt" not in err
