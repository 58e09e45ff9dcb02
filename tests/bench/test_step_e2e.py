"""`fastforec bench --what step|e2e` on a tiny config: real trainer, real DALI pipeline, CPU.

Numbers are checked for sanity (positive, finite, consistent with each other), never against
a time: performance is compared in the benchmark command itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fastforec.bench import e2e, step
from fastforec.bench.flops import count_flops
from fastforec.bench.settings import bench_config
from fastforec.config import load_config
from fastforec.models import deeplabv3plus
from tests import child_process
from tests.child_process import free_port

REPO = Path(__file__).resolve().parents[2]
BATCH = 2
CROP = 32
DECODER = 32  # decoder width: a narrow decoder keeps the tests fast
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny steps are dominated by per-op overhead; one thread also keeps them from stalling in OpenMP
    barriers when other processes share the two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.shard_sets import make_shards

    return make_shards(tmp_path_factory.mktemp("bench_shards"), num_train=16, num_labeled=6, num_val=2,
                       size=(48, 64), seed=0)


@pytest.fixture(scope="module")
def config(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = {"data": {"root": str(shards), "crop_size": CROP, "batch_size": BATCH, "num_threads": 1, "device": "cpu"},
           "model": {"backbone": "resnet18", "output_stride": 16, "decoder_channels": DECODER},
           "method": {"base": "mean_teacher", "aux": "forec", "conf_thresh": 0.5, "warmup_epochs": 3},
           "optim": {"lr": 0.01},
           "train": {"name": "bench", "epochs": 1, "max_steps": 50},
           "deepspeed": {}}
    path = tmp_path_factory.mktemp("bench_cfg") / "tiny.json"
    path.write_text(json.dumps(cfg))
    return path


def _args(config_path: Path, out: Path, **kw) -> argparse.Namespace:
    base = dict(config=str(config_path), data=None, crop=None, threads=None, batches=1, json_out=str(out), overrides=[],
                peak_tflops=None, local_rank=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture(scope="module")
def step_result(config: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `bench --what step` run, peak measured (no --peak-tflops)."""
    out = tmp_path_factory.mktemp("step") / "step.json"
    assert step.run(_args(config, out)) == 0
    return json.loads(out.read_text())


def _positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ---------------------------------------------------------------------------------------------
# FLOP counting against hand counts


def conv_flops(n: int, cin: int, cout: int, k: int, hw: int, groups: int = 1) -> int:
    """2 x multiply-adds of a convolution producing ``hw`` output pixels per image."""
    return 2 * n * cout * (cin // groups) * k * k * hw


def test_count_flops_matches_hand_count_for_a_small_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.rand(2, 3, 10, 10)  # no gradient wanted for the input, as in the trainer
    first, second = conv_flops(2, 3, 8, 3, 100), conv_flops(2, 8, 4, 1, 100)
    # backward: grad-weight for both convs, grad-input only for the second (the first's input is a leaf
    # that needs no gradient)
    want = first + second + (second + second) + first
    assert count_flops(lambda: model(x).sum().backward()) == want


def _conv_hand_count(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(forward FLOPs of every Conv2d from its recorded shapes, FLOPs of the first conv)."""
    counts: list[int] = []

    def hook(mod: nn.Conv2d, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        n, cout, ho, wo = out.shape
        kh, kw = mod.kernel_size
        counts.append(2 * n * cout * (mod.in_channels // mod.groups) * kh * kw * ho * wo)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return sum(counts), counts[0]


def test_step_flops_match_a_hand_count(step_result: dict, config: Path, tmp_path: Path) -> None:
    """FLOPs/sample of a real train step (and of the meta-device count behind --batches 0) equal
    conv shapes recorded by hooks: teacher forward on B + student forward and backward on 2B."""
    result = step_result
    num_classes = json.loads((Path(result["data"]) / "manifest.json").read_text())["num_classes"]
    student = deeplabv3plus(backbone="resnet18", num_classes=num_classes, reconstruction="rgb",
                            decoder_channels=DECODER).eval()
    teacher = student.segmentation_copy().eval()
    teacher_fwd, _ = _conv_hand_count(teacher, torch.rand(BATCH, 3, CROP, CROP))
    student_fwd, stem = _conv_hand_count(student, torch.rand(2 * BATCH, 3, CROP, CROP))
    want = teacher_fwd + 3 * student_fwd - stem  # no grad-input for the stem: the image is a leaf
    assert result["flops_per_sample"] * BATCH == want

    only = tmp_path / "flops.json"
    assert step.run(_args(config, only, batches=0)) == 0
    counted = json.loads(only.read_text())
    assert counted["flops_per_sample"] * BATCH == want
    assert counted["teacher_flops_per_sample"] * BATCH == teacher_fwd


# ---------------------------------------------------------------------------------------------
# the two benchmarks


def test_step_reports_positive_finite_numbers(step_result: dict) -> None:
    r = step_result
    for key in ("samples_per_s_per_device", "samples_per_s_total", "flops_per_sample",
                "achieved_flops_per_s_per_device", "peak_flops_per_s_per_device", "mfu", "step_seconds"):
        assert _positive(r[key]), key
    assert r["peak_source"].startswith("measured")
    assert r["world_size"] == 1 and len(r["per_rank"]) == 1
    assert r["samples_per_s_total"] == pytest.approx(r["samples_per_s_per_device"])
    assert r["achieved_flops_per_s_per_device"] == pytest.approx(r["samples_per_s_per_device"] * r["flops_per_sample"])
    assert r["mfu"] == pytest.approx(r["achieved_flops_per_s_per_device"] / r["peak_flops_per_s_per_device"])
    assert r["step_seconds"] == pytest.approx(BATCH / r["samples_per_s_per_device"])
    assert len(r["per_round_samples_per_s"]) == r["rounds"] and all(map(_positive, r["per_round_samples_per_s"]))
    assert r["per_rank"][0]["skipped_steps"] == 0


def test_e2e_reports_efficiency_and_data_wait(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "e2e.json"
    # 2 warm-up + 3 x (2 drained + 1 timed) pipeline batches over 5 batches per epoch: the e2e feed
    # crosses epoch boundaries
    assert e2e.run(_args(config, out, batches=1, peak_tflops=2.0)) == 0
    r = json.loads(out.read_text())
    for key in ("samples_per_s_per_device", "step_samples_per_s_per_device", "e2e_samples_per_s_per_device",
                "efficiency", "flops_per_sample", "mfu"):
        assert _positive(r[key]), key
    assert 0.0 <= r["data_wait_fraction"] < 1.0
    assert r["samples_per_s_per_device"] == r["e2e_samples_per_s_per_device"]
    assert r["efficiency"] == pytest.approx(r["e2e_samples_per_s_per_device"] / r["step_samples_per_s_per_device"])
    assert r["peak_flops_per_s_per_device"] == 2e12 and r["peak_source"] == "--peak-tflops"
    assert r["mfu"] == pytest.approx(r["samples_per_s_per_device"] * r["flops_per_sample"] / 2e12)
    assert len(r["per_round_samples_per_s"]["e2e"]) == len(r["per_round_samples_per_s"]["step"]) == r["rounds"]


@pytest.mark.parametrize("module, kw, message", [
    (e2e, {"batches": 0}, "needs --batches >= 1"),
    (step, {"batches": -1}, "--batches must be >= 0"),
    (step, {"peak_tflops": -3.0}, "--peak-tflops must be > 0"),
    (step, {"config": None}, "needs --config"),
    (step, {"data": "/nonexistent/shards"}, "no manifest.json in '/nonexistent/shards'"),
])
def test_bad_arguments_exit_2_with_a_message(module, kw, message: str, config: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "never.json"
    assert module.run(_args(config, out, **kw)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_two_ranks_report_per_rank_and_total(config: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU ranks (gloo): one row per rank, total = sum."""
    out = tmp_path / "step2.json"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")  # CPU ranks on any machine
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "fastforec.cli", "bench", "--what", "step", "--config", str(config), "--batches", "1",
           "--peak-tflops", "1", "--json", str(out)]
    proc = child_process.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world_size"] == 2 and [row["rank"] for row in r["per_rank"]] == [0, 1]
    assert all(_positive(row["samples_per_s"]) for row in r["per_rank"])
    assert r["samples_per_s_total"] == pytest.approx(sum(row["samples_per_s"] for row in r["per_rank"]))
    assert r["samples_per_s_per_device"] == pytest.approx(r["samples_per_s_total"] / 2)
    assert "total" in proc.stdout


def test_config_overrides_reach_the_trainer(config: Path) -> None:
    args = _args(config, Path("unused"), crop=40, threads=2, overrides=["method.aux=rec"])
    cfg = bench_config(args, what="step")
    assert (cfg.data.crop_size, cfg.data.num_threads, cfg.method.aux) == (40, 2, "rec")
    assert cfg.method.warmup_epochs == 0 and load_config(config).method.warmup_epochs == 3
