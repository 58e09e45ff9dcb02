"""Atomic file writes: write to a temporary name in the same directory, fsync, rename.

A reader (or a crash) never sees a half-written file: either the old file or the new one. A write
that fails for a reason of the file system (no space, read-only, a path under a regular file) is a
:class:`WriteError` naming the file and the cause, whatever the writing library raised (``torch.save``
raises RuntimeError, safetensors its own type), and its temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from fastforec.errors import UserError

TMP_MARKER = ".tmp-"  # temporary name: ".<final name>.tmp-<pid>"
# Below this many free bytes a failed write is put down to a full disk.
LOW_SPACE_BYTES = 1 << 20
FILESYSTEM_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
                     errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                     errno.ENOTDIR: "a part of the path is a regular file, not a directory",
                     errno.EEXIST: "a part of the path is a regular file, not a directory",
                     errno.EDQUOT: "disk quota exceeded"}


# Some writers (safetensors) create their file 0600; a finished output gets the mode any new file
# of this process gets (0666 less the umask), read once here because reading it means setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


class WriteError(UserError):
    """An output file could not be written; the message names it and the cause."""


def write_problem(path: Path, error: BaseException) -> str | None:
    """Why writing ``path`` failed, when the file system says so; None for other failures (bugs)."""
    if isinstance(error, OSError) and error.errno in FILESYSTEM_ERRNOS:
        return FILESYSTEM_ERRNOS[error.errno]
    probe = path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"'{probe}' is a regular file, not a directory"
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return "read-only file system"
        if shutil.disk_usage(probe).free < LOW_SPACE_BYTES:
            return "no space left on the device"
    except OSError:
        pass
    if not os.access(probe, os.W_OK):
        return "permission denied"
    return None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as e:  # noqa: BLE001 - each library raises its own type for a failed write
        problem = write_problem(path, e)
        if problem is None:
            raise
        raise WriteError(f"cannot write '{path}': {problem}; free some space or choose another output "
                         f"location") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is flushed.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def remove_temporaries(directory: str | Path, name_glob: str) -> list[Path]:
    """Delete the temporaries that writes of files matching ``name_glob`` left behind when their
    process was killed (a clean failure removes its own). Call only when no other process is
    writing into ``directory``."""
    stale = sorted(Path(directory).glob(f".{name_glob}{TMP_MARKER}*"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
