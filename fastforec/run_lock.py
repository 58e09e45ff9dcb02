"""One run per run directory: an advisory lock held for the run's life.

Two trainings writing into one directory interleave their ``metrics.jsonl`` and replace each
other's checkpoints and results without a word. The main rank takes ``fcntl.flock`` on
``<run dir>/.lock`` before any work and keeps the file open until the process ends; the kernel
releases it on any exit, a crash or ``kill -9`` included, so a stale lock cannot exist. The file
holds the owner's PID and start time, for the message the next run prints. Ranks of one run do
not take it: rank 0 decides for all (``all_ranks_true`` in the caller).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
from pathlib import Path
from typing import IO

from fastforec.errors import UserError, foreign_entries

LOCK_NAME = ".lock"
# what fastforec's own commands write into a run directory before the run starts: `ablate`'s log of
# the training subprocess and its provenance record, `pretrain`'s record of attempts
BESIDE_A_RUN = ("train.log", "provenance.json", "attempts.json")


class RunDirectoryBusy(UserError):
    """Another run holds the run directory."""


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._file: IO[str] | None = None
        self._made_dir = False

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirectoryBusy` naming its holder."""
        self._made_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read()
            f.close()
            raise RunDirectoryBusy(f"run directory '{self.path.parent}' is in use by another run "
                                   f"({_describe(holder)}); wait for it to end, or choose another --run-dir / "
                                   f"train.name") from None
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        f.write(json.dumps({"pid": os.getpid(), "started": started}) + "\n")
        f.flush()
        self._file = f  # kept open: closing the file would release the lock

    def release(self) -> None:
        """Let go; a run that stopped before writing anything leaves no directory behind."""
        if self._file is None:
            return
        if self._made_dir and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
            self.path.unlink()
            self.path.parent.rmdir()
        self._file.close()  # after the unlink: nobody can take a lock on the removed file meanwhile
        self._file = None


def refuse_foreign_run_dir(run_dir: Path) -> None:
    """A fresh run writes config.json, results.json, metrics.jsonl, ... into its directory. A
    non-empty directory that no run has used (no lock file: every run leaves one) holds someone
    else's files, which the run could replace: refused, before any work. Hidden entries and
    ``BESIDE_A_RUN`` do not count, and nothing is touched."""
    if not run_dir.is_dir() or (run_dir / LOCK_NAME).exists():
        return
    if shown := foreign_entries(run_dir, ours=BESIDE_A_RUN):
        raise UserError(f"run directory '{run_dir}' is not empty and no run has used it (it holds {shown}); a run "
                        f"writes config.json, results.json, metrics.jsonl and more there: choose a new or empty "
                        f"--run-dir / train.name")


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"PID {info['pid']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "its PID is not recorded"
