"""End-to-end runs of fastforec/train.py as a user runs it (single process, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from trainer_support import read_jsonl, run_train, tiny_config, write_config

from fastforec.config import config_from_dict
from fastforec.run_lock import LOCK_NAME
from fastforec.runlog import RunLogger


def _tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``directory``, read back by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(directory.glob("events.out.tfevents.*")), f"no event file in {directory}"
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_forec_run_writes_results_metrics_and_checkpoints(shards: Path, tmp_path: Path) -> None:
    monitor = {"csv_monitor": {"enabled": True, "output_path": str(tmp_path / "csv"), "job_name": "tiny"}}
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, deepspeed=monitor))
    run_dir = tmp_path / "run"
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= {"miou_last", "miou_best", "best_epoch", "per_class_iou", "class_names"}
    assert 0.0 <= results["miou_last"] <= 1.0 and results["miou_best"] >= results["miou_last"]
    assert list(results["per_class_iou"]) == results["class_names"]
    assert results["step"] == 4

    records = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        for key in ("loss", "loss_s", "loss_u", "loss_rec", "lr", "samples_per_s", "data_wait_frac"):
            assert math.isfinite(r[key]), (key, r)
        assert 0.0 <= r["pl_coverage"] <= 1.0 and 0.0 < r["teacher_conf"] <= 1.0
    assert train[1]["lr"] < train[0]["lr"], "poly decay"
    assert len(evals) >= 1 and evals[-1]["miou"] == results["miou_last"]

    # the same scalars reach DeepSpeed's monitor (CSV here; TensorBoard / W&B alike)
    rows = (tmp_path / "csv" / "tiny" / "train_loss_u.csv").read_text().splitlines()
    assert rows[0] == "step,loss_u" and [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4]
    assert float(rows[1].split(",")[1]) == train[0]["loss_u"]
    assert (tmp_path / "csv" / "tiny" / "eval_miou.csv").is_file()

    # TensorBoard, on by default: event files in the run directory holding the same scalars
    tb = _tensorboard_scalars(run_dir / "tensorboard")
    for key in ("loss", "loss_s", "loss_u", "loss_rec", "lr", "pl_coverage", "teacher_conf"):
        assert [s for s, _ in tb[f"train/{key}"]] == [1, 2, 3, 4], key
        assert [v for _, v in tb[f"train/{key}"]] == pytest.approx([r[key] for r in train], rel=1e-6), key
    assert tb["eval/miou"] == [(evals[-1]["step"], pytest.approx(results["miou_last"], rel=1e-6))]
    per_class = {name: v for name, v in results["per_class_iou"].items() if v is not None}
    assert per_class and all(tb[f"eval/iou/{name}"][-1][1] == pytest.approx(v, rel=1e-6)
                             for name, v in per_class.items())

    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["method"]["base"], saved["method"]["aux"]) == ("mean_teacher", "forec")
    assert "name" not in saved["method"] and saved["data"]["root"] == str(shards)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_00000002.pt", "step_00000002.rank0.pt", "step_00000004.pt", "step_00000004.rank0.pt"]


def test_config_errors_stop_before_any_work(shards: Path, tmp_path: Path) -> None:
    bad = tiny_config(shards, method={"conf_tresh": 0.9})
    proc = run_train(["--config", str(write_config(tmp_path / "bad.json", bad)), "--run-dir", str(tmp_path / "r1")],
                     cwd=tmp_path)
    assert proc.returncode == 2
    assert "method.conf_tresh: unknown key" in proc.stderr and "conf_thresh" in proc.stderr
    assert not (tmp_path / "r1").exists()

    missing = tiny_config(tmp_path / "no_such_dir")
    proc = run_train(["--config", str(write_config(tmp_path / "m.json", missing)), "--run-dir", str(tmp_path / "r2")],
                     cwd=tmp_path)
    assert proc.returncode == 2 and "data.root" in proc.stderr and "no_such_dir" in proc.stderr
    assert not (tmp_path / "r2").exists()

    proc = run_train(["--config", str(write_config(tmp_path / "ok.json", tiny_config(shards))),
                      "--set", "model.output_stride=32", "--run-dir", str(tmp_path / "r3")], cwd=tmp_path)
    assert proc.returncode == 2 and "model.output_stride: must be 8 or 16" in proc.stderr

    # a folder of the user's own files (a config.json among them) is not a run directory: refused
    # before the run could replace them
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "photo.jpg").write_bytes(b"\xff\xd8")
    proc = run_train(["--config", str(tmp_path / "ok.json"), "--run-dir", str(mine)], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (f"run directory '{mine}' is not empty and no run has used it (it holds config.json, photo.jpg)"
            in proc.stderr)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "photo.jpg"]
    assert (mine / "config.json").read_text() == "{}"


def test_corrupt_checkpoint_on_resume_is_a_clear_error_and_nothing_is_overwritten(shards: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": 2}))
    run_dir = tmp_path / "run"
    assert run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path).returncode == 0
    ckpt = run_dir / "checkpoints" / "step_00000002.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    # every file but the run lock's (each run writes its PID there)
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir), "--resume"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "step_00000002.pt" in proc.stderr and "corrupt" in proc.stderr
    after = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    assert after == before

    # a fresh start into a run directory that holds checkpoints is refused
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def test_tensorboard_is_written_from_the_first_record_and_can_be_turned_off(tmp_path: Path) -> None:
    names = ["background", "cat"]
    logger = RunLogger(tmp_path / "on", enabled=True, tensorboard=True, class_names=names)
    assert not (tmp_path / "on").exists()  # nothing before the first record
    (tmp_path / "on").mkdir()
    logger.log({"step": 3, "epoch": 0, "miou": 0.25, "iou": [0.5, None], "note": "text"}, step=3, prefix="eval")
    logger.log({"step": 5, "loss": 1.5}, step=5, prefix="train")
    tb = _tensorboard_scalars(tmp_path / "on" / "tensorboard")
    assert tb == {"eval/epoch": [(3, 0.0)], "eval/miou": [(3, 0.25)], "eval/iou/background": [(3, 0.5)],
                  "train/loss": [(5, 1.5)]}
    off = RunLogger(tmp_path / "off", enabled=True, tensorboard=False, class_names=names)
    (tmp_path / "off").mkdir()
    off.log({"step": 1, "loss": 1.0}, step=1, prefix="train")
    assert [p.name for p in (tmp_path / "off").iterdir()] == ["metrics.jsonl"]
    assert config_from_dict({}).train.tensorboard
    assert not config_from_dict({"train": {"tensorboard": False}}).train.tensorboard
