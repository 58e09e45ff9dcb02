"""Run per-sample generation tasks, in parallel when asked, with a progress bar."""

from __future__ import annotations

import multiprocessing
from typing import Callable, Sequence, TypeVar

from ..progress import make_console, progress_bar

T = TypeVar("T")
R = TypeVar("R")
_CHUNK = 4


def run_tasks(fn: Callable[[T], R], tasks: Sequence[T], *, workers: int, description: str, quiet: bool) -> list[R]:
    """Call ``fn`` on every task; returns the results in task order. Each task writes its own
    files and draws from its own RNG, so the order (and the number of workers) does not change
    the output."""
    console = make_console(quiet=quiet)
    with progress_bar(console) as progress:
        bar = progress.add_task(description, total=len(tasks))
        if workers <= 1 or len(tasks) <= 1:
            results = []
            for task in tasks:
                results.append(fn(task))
                progress.advance(bar)
            return results
        ctx = multiprocessing.get_context("forkserver")
        with ctx.Pool(processes=min(workers, len(tasks))) as pool:
            results = []
            for result in pool.imap(fn, tasks, chunksize=_CHUNK):
                results.append(result)
                progress.advance(bar)
            return results
