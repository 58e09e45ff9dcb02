"""Child processes of the tests, limited to what is left of the test's own time limit.

pytest-timeout (pyproject: 600 s per test, fixture set-up included) kills a test without a word
from the child it was waiting for. A child run through :func:`run` gets the time left to the test
minus a margin, so that a slow or hung child ends first, and the test fails with the child's
command, its stdout and stderr tails: what it was doing when the time ran out.
tests/conftest.py marks when each test starts.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from typing import Any, Sequence

import pytest

MARGIN_S = 20.0  # left to the test itself after its children: reporting, teardown
TAIL = 4000

_started: float | None = None
_limit: float | None = None


def mark_test_start(limit: float | None) -> None:
    """Called as each test's set-up begins (tests/conftest.py) with its time limit (None: none)."""
    global _started, _limit
    _started, _limit = time.monotonic(), limit


def time_left() -> float | None:
    """Seconds a child started now may run: the test's limit minus what it used and the margin."""
    if _started is None or not _limit:
        return None
    return max(1.0, _limit - (time.monotonic() - _started) - MARGIN_S)


def limit(timeout: float | None = None) -> float | None:
    """``timeout`` (the child's own bound, if any), cut to the time the test has left."""
    left = time_left()
    return left if timeout is None else timeout if left is None else min(timeout, left)


def _text(data: Any) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def fail_timed_out(cmd: Sequence[Any], seconds: float | None, stdout: Any, stderr: Any) -> None:
    pytest.fail(f"{shlex.join(str(c) for c in cmd)}\nstill running after {seconds:.0f} s (the test's time "
                f"limit less a margin): killed\n--- its stdout (end) ---\n{_text(stdout)[-TAIL:]}\n"
                f"--- its stderr (end) ---\n{_text(stderr)[-TAIL:]}", pytrace=False)


def run(cmd: Sequence[Any], *, timeout: float | None = None, **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run within the test's time (and ``timeout``, if given); a child that runs past it
    is killed and the test fails showing what the child printed."""
    seconds = limit(timeout)
    try:
        return subprocess.run(cmd, timeout=seconds, **kwargs)
    except subprocess.TimeoutExpired as e:
        timed_out = e
    fail_timed_out(cmd, seconds, timed_out.stdout, timed_out.stderr)
    raise AssertionError("not reached")


def wait(child: subprocess.Popen, *, timeout: float | None = None) -> int:
    """Popen.wait within the test's time; past it the child is killed and the test fails."""
    seconds = limit(timeout)
    try:
        return child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        child.kill()
    out, err = child.communicate()
    fail_timed_out(child.args, seconds, out, err)
    raise AssertionError("not reached")


def free_port() -> str:
    """A TCP port free right now, for a launcher's --master_port (torchrun's --master_port 0 leaves
    the workers waiting for a rendezvous; a fixed port fails when another run holds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])
