"""Progress bars and timing lines (rich, on stderr so stdout stays parseable)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from fastforec.formats import sig


class _RateColumn(ProgressColumn):
    """Images per second since the bar started: the same definition as the summary line. (rich's
    own speed averages the last seconds of advances, which arrive from the worker pool in bursts
    and read many times too high.)"""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed or not task.completed:
            return Text("-- img/s")
        return Text(f"{sig(task.completed / elapsed)} img/s")


def make_console(*, quiet: bool = False) -> Console:
    return Console(stderr=True, quiet=quiet)


@contextlib.contextmanager
def progress_bar(console: Console) -> Iterator[Progress]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as progress:
        yield progress
