"""Idempotent and resumable: complete shards are kept, a killed run resumes to the same manifest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests import child_process
from tests.dataprep.conftest import CliRunner, lines

STARTUP_TIMEOUT_S = 300.0  # without a test time limit (no pytest-timeout); else the test's time left
POLL_S = 0.05


def _convert(cli: CliRunner, root: Path, split: Path, out: Path, *extra: object) -> str:
    result = cli("voc", "--root", root, "--split-dir", split, "--out", out, "--workers", 1, "--shard-samples", 2,
                 *extra)
    assert result.code == 0, result.err
    return result.err


def _stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("*.tar"))}


def test_rerun_reuses_every_shard(voc_raw: Path, voc_split: Path, tmp_path: Path, cli: CliRunner) -> None:
    out = tmp_path / "out"
    _convert(cli, voc_raw, voc_split, out)
    manifest, stamps = (out / "manifest.json").read_bytes(), _stamps(out)
    err = _convert(cli, voc_raw, voc_split, out)
    assert "0 image(s) converted" in err and f"{len(stamps)} shard(s) reused" in err
    assert (out / "manifest.json").read_bytes() == manifest
    assert _stamps(out) == stamps


def test_changed_input_redoes_its_shard_onwards(voc_raw: Path, voc_split: Path, tmp_path: Path,
                                                cli: CliRunner) -> None:
    out = tmp_path / "out"
    _convert(cli, voc_raw, voc_split, out)
    before = _stamps(out)
    unlabeled = sorted(lines(voc_split / "unlabeled.txt"))
    changed = unlabeled[2]  # with 2 samples per shard: the first sample of unlabeled-000001
    path = voc_raw / "JPEGImages" / f"{changed}.jpg"
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path, quality=90)
    _convert(cli, voc_raw, voc_split, out)
    after = _stamps(out)
    assert after["unlabeled-000000.tar"] == before["unlabeled-000000.tar"]
    assert after["unlabeled-000001.tar"] != before["unlabeled-000001.tar"]
    assert all(after[n] == before[n] for n in before if not n.startswith("unlabeled"))


def test_kill_9_then_resume_gives_the_same_manifest(voc_raw: Path, voc_split: Path, tmp_path: Path,
                                                    cli: CliRunner) -> None:
    """The third val image is a FIFO, so the run blocks there deterministically after two complete
    val shards (1 sample each); it is then killed with SIGKILL."""
    val = sorted(lines(voc_raw / "ImageSets/Segmentation/val.txt"))
    blocker = voc_raw / "JPEGImages" / f"{val[2]}.jpg"
    original = blocker.read_bytes()
    blocker.unlink()
    os.mkfifo(blocker)
    out = tmp_path / "out"
    args = ["voc", "--root", str(voc_raw), "--split-dir", str(voc_split), "--out", str(out), "--workers", "1",
            "--shard-samples", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "dataprep.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        marker = out / ".dataprep/state/val-000001.json"
        start = time.monotonic()  # it may take what is left of the test's time (a busy machine is slow)
        deadline = start + (child_process.time_left() or STARTUP_TIMEOUT_S)
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            if time.monotonic() > deadline:
                proc.kill()
                child_process.fail_timed_out(proc.args, deadline - start, *proc.communicate())
            time.sleep(POLL_S)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    kept = _stamps(out)
    assert {"val-000000.tar", "val-000001.tar"} <= set(kept)
    blocker.unlink()
    blocker.write_bytes(original)

    err = _convert(cli, voc_raw, voc_split, out, "--shard-samples", 1)
    assert "resuming:" in err
    reference = tmp_path / "reference"
    _convert(cli, voc_raw, voc_split, reference, "--shard-samples", 1)
    assert (out / "manifest.json").read_bytes() == (reference / "manifest.json").read_bytes()
    assert {n: t for n, t in _stamps(out).items() if n in kept} == kept  # nothing complete was rewritten
    assert not list(out.glob(".*.tmp-*"))
