"""The rich console a command prints its tables and lines with.

On a terminal rich wraps at its width. Written to a file or a pipe rich assumes 80 columns and
wraps there too, which splits recipe names, commands and table titles in the middle (and so
breaks copying and grep): there the console is :data:`PIPE_WIDTH` wide instead, whatever
``COLUMNS`` says (pytest-xdist workers and some CI runners export COLUMNS=80 to every child).
On a terminal rich's own rules stand (its width, or COLUMNS). Only rich, so that `fastforec
recipes` and ablate stay free of torch.
"""

from __future__ import annotations

from rich.console import Console

PIPE_WIDTH = 200  # columns of output that goes to a file or a pipe


def output_console(*, stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=PIPE_WIDTH)
