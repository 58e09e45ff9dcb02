"""Stopping a training run on a signal without losing its work.

A cluster scheduler stops a job with SIGTERM (SLURM at the time limit or on preemption, Kubernetes
on eviction), SLURM's ``--signal=USR1@<seconds>`` warns ahead of that, and a person presses Ctrl-C
(SIGINT). :class:`StopSignals` turns each into a request the training loop honours at the next
step boundary: every rank finishes the step it is in, rank 0 writes a checkpoint of it, and the
process exits with the conventional status 128 + signal number.

Two phases, because the loop can only stop between steps:

- start-up (building the model, DeepSpeed, the data pipelines: nothing worth saving yet): a signal
  raises :class:`Stopped` at once, so start-up work such as a C++ extension build is abandoned
  through its ``finally`` blocks (no stale lock files) and the entry point prints one line;
- training (:meth:`StopSignals.defer`): a signal only sets :attr:`StopSignals.signum`. The ranks
  combine their flags in the step's existing all-reduce, so a signal that reached one rank first
  stops all of them after the same step, with no extra collective.

A second signal while a stop is pending means "now": the process exits at once with 128 + signal
number, saving nothing more (the previous checkpoint stays the newest). A repeat within
DUPLICATE_WINDOW_S of the first is not a second request but the same one delivered twice: SLURM
and a terminal's Ctrl-C signal every process of the job, and the ``deepspeed`` and ``torchrun``
launchers then pass the signal on to their ranks once more, milliseconds later.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
DUPLICATE_WINDOW_S = 1.0  # a repeat sooner than this is a launcher forwarding the first signal


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal (SIGTERM 143, SIGINT 130)."""
    return 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Stopped(BaseException):
    """A stop signal arrived; ``step`` is the step the run stopped after (None: during start-up).
    A BaseException, as KeyboardInterrupt: library code's ``except Exception`` must not swallow it."""

    def __init__(self, signum: int | None, step: int | None = None, checkpoint: Any = None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(self.describe())

    @property
    def exit_code(self) -> int:
        # a rank that stopped because another rank got the signal exits as if it had got SIGTERM
        return exit_code(self.signum if self.signum is not None else signal.SIGTERM)

    def describe(self) -> str:
        name = signal_name(self.signum) if self.signum is not None else "a signal to another rank"
        if self.step is None:
            return f"stopped by {name} during start-up; nothing was trained, so nothing was saved"
        saved = f" (checkpoint '{self.checkpoint}')" if self.checkpoint is not None else ""
        return f"stopped by {name} at step {self.step}{saved}; resume with --resume"


class StopSignals:
    """Handlers for STOP_SIGNALS, installed by :meth:`install` (main thread only, as Python's
    ``signal`` requires) and put back by :meth:`restore`; a context manager does both."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.received_at = 0.0  # time.monotonic() of the first signal
        self.deferred = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a caller in another keeps the defaults
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def defer(self) -> None:
        """From now on a signal is a request, honoured at the next step boundary."""
        self.deferred = True

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            if time.monotonic() - self.received_at < DUPLICATE_WINDOW_S:
                return
            # the second signal: the user (or the scheduler) will not wait for the step to end
            print(f"{signal_name(signum)} again: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(exit_code(signum))
        self.signum, self.received_at = signum, time.monotonic()
        if not self.deferred:
            raise Stopped(signum)
        print(f"{signal_name(signum)} received: stopping after the current step (saving a checkpoint); "
              f"send it again to exit at once", file=sys.stderr, flush=True)
