"""Exact resume: a run killed after a checkpoint and resumed equals the uninterrupted run, and
leaves no trace of the kill (metrics.jsonl holds each step once, no temporary files remain)."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from trainer_support import CPU_ONLY, clean_env, read_jsonl, run_train
from trainer_support import RESUME_CHECKPOINT_EVERY as KILL_AT  # the checkpoint the killed run leaves
from trainer_support import RESUME_STEPS as STEPS

from tests import child_process

LOGGED_PAST = 4  # the kill comes after the metrics of this step are written: lines the resume must drop
LOSS_KEYS = ("loss", "loss_s", "loss_u", "loss_rec")


def _final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / f"step_{STEPS:08d}.pt", weights_only=True)


def _logged_steps(path: Path) -> list[int]:
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return steps


def _train_losses(run_dir: Path) -> dict[int, list[float]]:
    return {r["step"]: [r[k] for k in LOSS_KEYS] for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"}


# train.py's main in a child that SIGKILLs itself right after metrics.jsonl gets the record of step
# LOGGED_PAST: past the checkpoint at KILL_AT, before the run ends, on a machine of any speed (a
# parent polling the file and killing from outside can lose that race on a fast machine).
KILLED_AFTER_LOGGING = textwrap.dedent("""
    import os, signal, sys
    from fastforec import runlog
    log = runlog.RunLogger.log
    def log_then_die(self, record, *, step, prefix):
        log(self, record, step=step, prefix=prefix)
        if prefix == "train" and step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean shutdown, as after a node failure
    runlog.RunLogger.log = log_then_die
    from fastforec.train import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="bit-exact resume is the CPU's promise (README); this "
                                                      "machine's runs train on its GPU")
def test_killed_and_resumed_run_equals_uninterrupted_run(uninterrupted_run: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, full = uninterrupted_run

    part = tmp_path / "part"
    killed = child_process.run([sys.executable, "-c", KILLED_AFTER_LOGGING.format(step=LOGGED_PAST),
                                "--config", str(cfg), "--run-dir", str(part)],
                               cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    marker = part / "checkpoints" / f"step_{KILL_AT:08d}.pt"
    assert marker.exists() and LOGGED_PAST in _logged_steps(part / "metrics.jsonl"), \
        "the interrupted run never got past its checkpoint"
    assert not (part / "checkpoints" / f"step_{STEPS:08d}.pt").exists(), "the run finished before the kill"
    # what a kill during a write leaves: a torn last line and checkpoint temporaries
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "time": 1.0, "st')
    stale = [part / "checkpoints" / f".step_{STEPS:08d}.pt.tmp-4242",
             part / "checkpoints" / f".step_{STEPS:08d}.rank0.pt.tmp-4242"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")

    proc = run_train(["--config", str(cfg), "--run-dir", str(part), "--resume"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metrics.jsonl: dropped" in proc.stderr

    a, b = _final_state(full), _final_state(part)
    assert a["state"]["step"] == b["state"]["step"] == STEPS
    for key in ("student", "teacher"):
        for name, t in a[key].items():
            # bit-exact: CPU kernels are deterministic and the data position and RNG are restored
            assert torch.equal(t, b[key][name]), f"{key}.{name} differs after resume"
    # each step logged once, with the uninterrupted run's losses
    assert [r["step"] for r in read_jsonl(part / "metrics.jsonl") if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert _train_losses(part) == _train_losses(full)
    assert not any(p.exists() for p in stale)
    names = lambda run: sorted(p.name for p in (run / "checkpoints").iterdir())  # noqa: E731
    assert names(part) == names(full)


def test_resuming_a_finished_run_leaves_it_as_it_is(uninterrupted_run: tuple[Path, Path], tmp_path: Path) -> None:
    # a requeued job whose run had finished: --resume auto (and --resume) say so and change nothing,
    # instead of evaluating again and logging that evaluation twice
    cfg, full = uninterrupted_run
    run = tmp_path / "run"
    shutil.copytree(full, run)
    before = {name: (run / name).read_bytes() for name in ("metrics.jsonl", "results.json")}
    for how in (["--resume", "auto"], ["--resume"]):
        proc = run_train(["--config", str(cfg), "--run-dir", str(run), *how], cwd=tmp_path, env=CPU_ONLY)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"finished at step {STEPS} before; its results ('{run / 'results.json'}') stand" in proc.stderr
        assert "eval student" not in proc.stderr and "scored: student" in proc.stdout  # its table, not a new one
        assert {name: (run / name).read_bytes() for name in before} == before
