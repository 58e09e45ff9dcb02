"""The console of a run: number formats, the estimate from fixed timings, and the lines a short
run prints (cadence, content, no control codes when the output is a file)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

from fastforec.console import Estimate, RunConsole
from fastforec.formats import duration, sig

CPU = torch.device("cpu")


@pytest.mark.parametrize("x, text", [(0.0312, "0.0312"), (0.03, "0.0300"), (1.234, "1.23"), (12.34, "12.3"),
                                     (123.4, "123"), (12345.6, "12,346"), (0.0, "0"), (3e-6, "3.00e-06")])
def test_three_significant_digits(x: float, text: str) -> None:
    assert sig(x) == text


@pytest.mark.parametrize("seconds, text", [(12.4, "12 s"), (245, "4 min 05 s"), (3 * 3600 + 12 * 60, "3 h 12 min"),
                                           (2 * 86400 + 3 * 3600, "2 d 03 h")])
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_estimate_from_fixed_timings() -> None:
    e = Estimate(sec_per_step=2.5, steps_left=1000, evals_left=4, sec_per_eval=None)
    assert e.total_seconds == 2500
    assert e.describe() == "1000 steps x 2.50 s = 41 min 40 s of training, plus 4 evaluations (timed at the first one)"
    assert e.warning(CPU) is None
    e = Estimate(sec_per_step=32.0, steps_left=9000, evals_left=40, sec_per_eval=5 * 3600)
    assert e.total_seconds == 32 * 9000 + 40 * 5 * 3600
    assert e.describe().endswith("+ 40 evaluations x 5 h 00 min = 11 d 16 h")
    assert e.warning(CPU) == "warning: this run needs about 11.7 days on this CPU: the recipe is sized for GPUs " \
                             "(docs/reproduce.md)"


def _console(terminal: bool) -> tuple[RunConsole, io.StringIO]:
    buf = io.StringIO()
    return RunConsole(enabled=True, console=Console(file=buf, force_terminal=terminal, width=200)), buf


def test_a_file_gets_lines_and_no_control_codes_a_terminal_gets_a_live_bar() -> None:
    record = {"loss": 0.8123, "loss_s": 0.5, "loss_u": 0.25, "loss_rec": 0.0623, "lr": 0.001, "pl_coverage": 0.634,
              "sec_per_step": 0.84, "samples_per_s": 19.04}
    est = Estimate(sec_per_step=0.84, steps_left=100, evals_left=1, sec_per_eval=60.0)
    for terminal in (False, True):
        rc, buf = _console(terminal)
        with rc.training(total=120, completed=0) as bar:
            bar.update(20, "epoch 0")
            rc.print(rc.train_line(step=20, total=120, epoch=0, record=record, device=CPU, estimate=est,
                                   next_eval_s=30.0))
            with rc.evaluation(name="student", images=40) as ev:
                for _ in range(4):
                    ev.advance(10)
        text = buf.getvalue()
        line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        assert "step 20/120 | epoch 0 | loss 0.812 (sup 0.500 unsup 0.250 aux 0.0623) | lr 0.001 | " \
               "pseudo-labels 63% | 0.840 s/step, 19.0 samples/s | " in line
        assert "| eta 2 min 24 s (next eval in 30 s)" in line
        assert ("\x1b" in text) == terminal  # control codes only on a terminal
        if not terminal:
            assert "eval student: 10/40 images," in text and "eval student: 30/40 images," in text


def test_a_short_run_logs_its_first_and_last_step_and_prints_an_estimate(tmp_path: Path) -> None:
    from tests.shard_sets import make_shards
    from tests.trainer.trainer_support import read_jsonl, run_train, tiny_config, write_config

    shards = make_shards(tmp_path / "data", layout="voc", num_train=24, num_labeled=8, num_val=4, size=(64, 80))
    cores = os.cpu_count() or 1
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": 6, "log_every": 20,
                                                                         "tensorboard": False},
                                                          model={"sync_bn": True}, data={"num_threads": cores + 1}))
    proc = run_train(["--config", str(cfg), "--run-dir", str(tmp_path / "run")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 6]  # max_steps < log_every: still the first and the last step
    lines = proc.stderr.splitlines()
    assert any(line.startswith("step 1/6 | epoch 0 | loss ") for line in lines)
    # the run's own first line: what trains, the precision and the device (with a CPU's bf16 units)
    header = next(i for i, line in enumerate(lines) if line.startswith("run "))
    assert re.match(r"run \S+: mean_teacher\+\w+, resnet18, fp32 on cpu \(.+; (AMX-BF16|AVX512-BF16, no AMX|no bf16 "
                    r"units)\), 1 rank, ZeRO stage 0, 6 steps$", lines[header]), lines[header]
    assert header < next(i for i, line in enumerate(lines) if line.startswith("step 1/6"))
    assert any(line.startswith("step 6/6 | ") for line in lines)
    assert any(line.startswith("estimate: 2 steps x ") for line in lines)
    assert any(re.match(r"eval student \(epoch \d+\): mIoU [\d.]+ \(4 images in ", line) for line in lines)
    assert "\x1b" not in proc.stderr
    # settings that cannot take effect here are said once
    assert proc.stderr.count("model.sync_bn=true has no effect on cpu") == 1
    assert f"data.num_threads={cores + 1} exceeds the {cores} CPU cores" in proc.stderr


def test_the_run_header_says_precision_and_the_cpus_bf16_units() -> None:
    from fastforec.console import run_header

    def line(flags: list[str], **kw) -> str:
        base = dict(name="demo", method="mean_teacher+forec", backbone="resnet18", precision="fp32", device=CPU,
                    ranks=1, zero_stage=0, steps=600, cpu={"model": "Some CPU", "flags": flags})
        return run_header(**{**base, **kw})

    assert line(["avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]) == (
        "run demo: mean_teacher+forec, resnet18, fp32 on cpu (Some CPU; AMX-BF16), 1 rank, ZeRO stage 0, 600 steps")
    assert "(Some CPU; AVX512-BF16, no AMX), 2 ranks, ZeRO stage 1" in line(["avx512_bf16"], ranks=2, zero_stage=1)
    assert "bf16 on cpu (Some CPU; no bf16 units)" in line(["avx2"], precision="bf16")
