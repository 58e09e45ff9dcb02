"""DeepSpeed's bf16 and torch_autocast blocks on 1 and 2 CPU ranks under ZeRO 1 and 2: training,
checkpoint and exact resume, fp32 statistics, and the bulk read of the fp32 master weights; fp16
refused on the CPU with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import torchrun
from trainer_support import (
    CPU_ONLY,
    assert_same_end,
    clean_env,
    resume_midway,
    run_train,
    tiny_config,
    write_config,
)

from tests import child_process

HARNESS = Path(__file__).with_name("precision_harness.py")
STEPS = 2
PRECISIONS = {"bf16": {"bf16": {"enabled": True}},
              "torch_autocast": {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}}


def _harness(shards: Path, tmp_path: Path, precision: str, stage: int, ranks: int) -> list[dict]:
    ds = {**PRECISIONS[precision], "zero_optimization": {"stage": stage}}
    # conf_thresh 0: every loss term is active on random batches; a narrow decoder keeps it fast.
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, method={"conf_thresh": 0.0},
                                                          model={"decoder_channels": 32}, deepspeed=ds))
    out = tmp_path / "out.json"
    launcher = torchrun() if ranks == 2 else [sys.executable]
    proc = subprocess.run(launcher + [str(HARNESS), "--config", str(cfg), "--out", str(out), "--steps", str(STEPS)],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


# Every pair of (precision, ZeRO stage, ranks) values occurs once: 4 runs instead of the 8 of the
# full grid (each a DeepSpeed run that checkpoints and resumes). ZeRO 1 and 2 keep the fp32 master
# partition the same way, so the pairs are where a difference could show.
# One rank runs stage 0 whatever the config says (nothing to partition). Stage 0 with the bf16
# block: DeepSpeed wraps the optimizer in its own BF16/FP16 optimizer instead of ZeRO's (once a
# traceback: "not a ZeRO 1/2 optimizer").
@pytest.mark.parametrize(("precision", "stage", "ranks"), [
    ("bf16", 1, 1), ("bf16", 2, 2), ("torch_autocast", 1, 2), ("torch_autocast", 2, 1), ("bf16", 0, 2)])
def test_train_checkpoint_resume(shards: Path, tmp_path: Path, precision: str, stage: int, ranks: int) -> None:
    reports = _harness(shards, tmp_path, precision, stage, ranks)
    assert len(reports) == ranks
    r = reports[0]
    # DeepSpeed casts the student's parameters in the bf16 block only; statistics stay fp32.
    assert r["dtypes"]["student_params"] == (["torch.bfloat16"] if precision == "bf16" else ["torch.float32"])
    assert r["dtypes"]["bn_stats"] == ["torch.float32"]
    assert r["dtypes"]["teacher"] == ["torch.float32"]
    for terms in r["losses_a"].values():
        assert terms.pop("dtypes") == ["torch.float32"]
        assert all(v == v and abs(v) < 1e3 for v in terms.values()), terms  # finite
    assert r["losses_a"]["0.0"]["loss_u"] > 0 and r["losses_a"]["0.0"]["loss_rec"] > 0
    # the resumed trainer continues exactly where the checkpoint was taken
    assert r["resumed_step"] == STEPS // 2
    for key, terms in r["losses_b"].items():
        terms.pop("dtypes")
        assert terms == r["losses_a"][key], key
    assert r["student_b"] == r["student_a"] and r["teacher_b"] == r["teacher_a"]
    # every rank holds the same student and teacher
    assert len({x["student_a"] for x in reports}) == 1 and len({x["teacher_a"] for x in reports}) == 1

    master = r["master"]
    if precision == "torch_autocast":
        assert master["bulk"] is None  # fp32 weights: the EMA reads the module itself
        return
    assert master["equal"] and master["rounds_to_module"] and master["dtype"] == ["torch.float32"]
    # ZeRO's partitions are checked against DeepSpeed's own reader; stage 0 has none to compare with
    stage = stage if ranks > 1 else 0
    assert master["helper_reads"] == (master["params"] if stage > 0 else 0)
    if stage == 0:
        assert master["optimizer"] in ("FP16_UnfusedOptimizer", "BF16_Optimizer", "FP16_Optimizer")
        return
    if ranks == 1:
        assert master["bulk"] == 0
    else:
        # one all-gather per parameter group, where DeepSpeed's helper issues one per parameter
        assert master["bulk"] == master["groups"] == 2
        assert master["per_param"] == master["params"] > 100
        # and a whole training step stays far below one collective per parameter
        assert max(r["collectives_per_step"]) < master["params"] // 4, r["collectives_per_step"]


def test_fp16_on_cpu_is_refused_with_a_clear_message(shards: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, deepspeed={"fp16": {"enabled": True},
                                                                             "zero_optimization": {"stage": 1}}))
    proc = run_train(["--config", str(cfg), "--run-dir", str(tmp_path / "run")], cwd=tmp_path)
    assert proc.returncode == 2
    assert "deepspeed.fp16" in proc.stderr and "CUDA" in proc.stderr and "bf16" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_two_precision_blocks_at_once_is_a_config_error(shards: Path, tmp_path: Path) -> None:
    both = {**PRECISIONS["bf16"], **PRECISIONS["torch_autocast"]}
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, deepspeed=both))
    proc = run_train(["--config", str(cfg), "--run-dir", str(tmp_path / "run")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "torch_autocast, bf16" in proc.stderr and "Traceback" not in proc.stderr


AMX_RUN = {"max_steps": 4, "checkpoint_every": 2, "keep_checkpoints": 2, "bf16_on_amx": True}


def test_bf16_on_amx_trains_in_the_precision_of_this_cpu_and_records_it(shards: Path, tmp_path: Path) -> None:
    from fastforec.provenance import cpu

    want = "bf16" if "amx_bf16" in cpu()["flags"] else "fp32"  # this machine's own /proc/cpuinfo
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={**AMX_RUN, "max_steps": 2}))
    proc = run_train(["--config", str(cfg), "--run-dir", str(tmp_path / "run")], cwd=tmp_path, env=CPU_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"mean_teacher+forec, resnet18, {want} (train.bf16_on_amx) on cpu (" in proc.stderr  # the first line
    assert "built successfully" not in proc.stdout  # DeepSpeed's extension message goes to stderr, not the results
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["deepspeed"]["bf16"] == {"enabled": want == "bf16"} and saved["train"]["bf16_on_amx"] is True
    assert json.loads((tmp_path / "run" / "results.json").read_text())["precision"] == want


def test_a_run_resumed_by_bf16_on_amx_keeps_the_precision_it_started_in(shards: Path, tmp_path: Path) -> None:
    # Started in the bf16 block (as on an AMX CPU), resumed with a config that leaves the choice to
    # train.bf16_on_amx: on any CPU it continues in bf16, bit for bit the run that never stopped
    # (fp32 would not even load the checkpoint's optimizer state), and eval scores it in bf16 too.
    started = write_config(tmp_path / "started.json", tiny_config(
        shards, train=AMX_RUN, deepspeed={"bf16": {"enabled": True}}))
    proc = run_train(["--config", str(started), "--run-dir", str(tmp_path / "full")], cwd=tmp_path, env=CPU_ONLY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    auto = write_config(tmp_path / "auto.json", tiny_config(shards, train=AMX_RUN))
    resumed = resume_midway(auto, tmp_path / "full", tmp_path / "part", midway=2, args=[], cwd=tmp_path,
                            launcher=None, env=CPU_ONLY)
    assert_same_end(tmp_path / "full", tmp_path / "part", steps=4, midway=2, networks=("student", "teacher"),
                    loss_keys=("loss", "loss_s", "loss_u", "loss_rec"))
    part = tmp_path / "part"
    assert "bf16 (train.bf16_on_amx, as the run started) on cpu" in resumed.stderr
    assert json.loads((part / "config.json").read_text())["deepspeed"]["bf16"] == {"enabled": True}
    results = json.loads((part / "results.json").read_text())
    assert results["precision"] == "bf16"
    scored = tmp_path / "eval.json"
    proc = child_process.run([sys.executable, "-m", "fastforec.cli", "eval", "--config", str(auto), "--checkpoint",
                              str(part), "--json", str(scored)], cwd=tmp_path, env=clean_env(**CPU_ONLY),
                             capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(scored.read_text())["miou"] == pytest.approx(results["miou_last"], abs=1e-9)
    assert json.loads(scored.read_text())["precision"] == "bf16" and f"{part} (student, whole, bf16)" in proc.stdout
    # the same checkpoint with the setting off: fp32 weights cannot continue a bf16 run; said before any work
    fp32 = write_config(tmp_path / "fp32.json", tiny_config(shards, train={**AMX_RUN, "bf16_on_amx": False}))
    proc = run_train(["--config", str(fp32), "--run-dir", str(part), "--resume"], cwd=tmp_path, env=CPU_ONLY)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert ("was trained in bf16, this run would train in fp32; resume in the checkpoint's precision (--set "
            "deepspeed.bf16.enabled=true) or start a new run") in proc.stderr
