"""Atomic writes: readers see the old file or the new one, never a partial one or a temp file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fastforec import atomic
from fastforec.atomic import atomic_path, atomic_write_bytes, atomic_write_json


class _Boom(RuntimeError):
    pass


def test_write_bytes_creates_parents_and_leaves_only_the_target(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "blob.bin"
    atomic_write_bytes(target, b"\x00\x01payload")
    assert target.read_bytes() == b"\x00\x01payload"
    assert sorted(p.name for p in target.parent.iterdir()) == ["blob.bin"]


def test_write_json_round_trips_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"x": [1, 2.5, None], "name": "é"})
    assert json.loads(target.read_text()) == {"x": [1, 2.5, None], "name": "é"}
    assert target.read_text().endswith("\n")
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_failure_mid_write_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(_Boom):
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent  # same filesystem, so the rename is atomic
            assert tmp != target
            tmp.write_text("half of the new con")
            raise _Boom()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_failure_before_the_first_write_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "never.bin"
    with pytest.raises(_Boom):
        with atomic_path(target):
            raise _Boom()
    assert list(tmp_path.iterdir()) == []


def test_file_is_fsynced_before_the_rename_and_the_directory_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Spy on the real calls (they still run): durability needs data -> rename -> directory entry.
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    tmp_path = tmp_path.resolve()  # /proc/self/fd links are resolved paths
    target = tmp_path / "ck.bin"
    atomic_write_bytes(target, b"data")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1] != str(target) and Path(events[0][1]).parent == tmp_path  # the temp file
    assert events[1][1] == str(target)
    assert events[2][1] == str(tmp_path)  # the directory holding the new entry
