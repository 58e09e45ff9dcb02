"""Running the ``dataprep`` command line from fastforec.

The packages depend one way: ``dataprep`` imports fastforec's manifest, atomic-write and error
types, and fastforec never imports ``dataprep``. Where fastforec needs shards made (``fastforec
ablate``, the benchmarks' generated data sets) it runs the same ``dataprep`` commands a user
would type, as a child process of this interpreter with this environment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

from fastforec.errors import UserError


def run_dataprep(argv: Sequence[str | int | Path]) -> None:
    """Run ``dataprep ARGV``; a failure raises :class:`UserError` naming the command and quoting
    the last line dataprep wrote to stderr (its ``error: ...`` line, or a crash's exception)."""
    argv = [str(a) for a in argv]
    done = subprocess.run([sys.executable, "-m", "dataprep.cli", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        stderr = done.stderr.strip()
        raise UserError(f"`dataprep {' '.join(argv)}` failed (exit {done.returncode}): "
                        f"{stderr.splitlines()[-1] if stderr else 'no message'}")
