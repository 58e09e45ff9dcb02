"""Failed writes, whatever the library raises, are one user-error line naming the file and the
cause, exit 2, no traceback, and no partial file under its final or temporary name.

A full disk and a read-only file system are real: small tmpfs mounts (the tests need root, as the
project's machines and CI run; elsewhere they are skipped, saying why)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_support import clean_env, run_train, tiny_config, write_config

from fastforec.atomic import WriteError, atomic_write_bytes
from fastforec.checkpoint_files import save_checkpoint
from tests import child_process

FASTFOREC = [sys.executable, "-m", "fastforec.cli"]
SMALL_FS = "96k"  # room for config.json and the metrics, not for a checkpoint


def _mount(path: Path, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=" + SMALL_FS, *options)), "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root, as on the project's machines")


@pytest.fixture
def full_fs(tmp_path: Path):
    root = tmp_path / "small"
    _mount(root)
    yield root
    subprocess.run(["umount", str(root)], check=False)


@pytest.fixture
def read_only_fs(tmp_path: Path):
    root = tmp_path / "ro"
    _mount(root)
    (root / "out").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    yield root
    subprocess.run(["umount", str(root)], check=False)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


def test_a_full_disk_is_a_write_error_and_leaves_nothing(full_fs: Path) -> None:
    with pytest.raises(WriteError, match=r"cannot write '.*big.bin': no space left on the device"):
        atomic_write_bytes(full_fs / "big.bin", b"x" * 200_000)
    # torch.save raises RuntimeError ("file write failed"), not OSError
    with pytest.raises(WriteError, match=r"cannot write '.*step_00000001.pt': no space left on the device"):
        save_checkpoint({"w": torch.zeros(100_000)}, full_fs / "step_00000001.pt")
    assert _leftovers(full_fs) == []


def test_a_read_only_file_system_and_a_path_under_a_file(read_only_fs: Path, tmp_path: Path) -> None:
    with pytest.raises(WriteError, match=r"cannot write '.*x.pt': read-only file system"):
        save_checkpoint({"w": torch.zeros(3)}, read_only_fs / "out" / "x.pt")
    regular = tmp_path / "file"
    regular.write_text("not a directory")
    with pytest.raises(WriteError, match=r"cannot write '.*file/x.pt': a part of the path is a regular file"):
        save_checkpoint({"w": torch.zeros(3)}, regular / "x.pt")


def test_training_onto_a_full_disk_stops_with_one_line_and_no_orphan(shards: Path, full_fs: Path,
                                                                    tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": 2, "checkpoint_every": 1,
                                                                         "tensorboard": False}))
    run_dir = full_fs / "run"
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "no space left on the device" in proc.stderr.strip().splitlines()[-1]
    left = _leftovers(run_dir / "checkpoints") if (run_dir / "checkpoints").exists() else []
    assert not [n for n in left if n.startswith(("step_", ".step_"))], left  # no rank file, no temporary


def test_export_to_an_unwritable_place_is_one_line(shards: Path, read_only_fs: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": 1, "tensorboard": False}))
    run_dir = tmp_path / "run"
    assert run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path).returncode == 0
    regular = tmp_path / "file"
    regular.write_text("x")
    for out in (read_only_fs / "out" / "m.safetensors", regular / "m.safetensors", read_only_fs / "out" / "m.onnx"):
        fmt = out.suffix[1:]
        proc = child_process.run(FASTFOREC + ["export", "--checkpoint", str(run_dir), "--format", fmt, "--out",
                                              str(out)], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.startswith("error: --out") and str(out.parent) in proc.stderr
    ok = tmp_path / "m.safetensors"
    proc = child_process.run(FASTFOREC + ["export", "--checkpoint", str(run_dir), "--format", "safetensors", "--out",
                                          str(ok)], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(ok.stat().st_mode) == 0o666 & ~umask  # not safetensors' 0600


def test_a_second_run_on_a_busy_run_directory_is_refused_naming_the_first(shards: Path, tmp_path: Path) -> None:
    """Two processes: one holds the run directory (as a running training does), the second is a
    real training launched onto it. After the holder dies (kill -9), the lock is gone with it."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from fastforec.run_lock import RunLock\n"
                               f"lock = RunLock(Path({str(run_dir)!r}))\nlock.acquire()\nprint('held', flush=True)\n"
                               "time.sleep(600)"], env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, train={"max_steps": 1, "tensorboard": False}))
        proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"is in use by another run (PID {holder.pid}, started " in proc.stderr
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
