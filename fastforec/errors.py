"""The one user-error type of the project, and how the command-line entries report it.

A :class:`UserError` is something the user can fix without reading the code: a config value, a
damaged or foreign file, an output path that cannot be written, a run that diverged. Its message
names the key or file and says what to change. Every error class that means this derives from
it (``ConfigError``, ``CheckpointError``, ``ManifestError``/``ShardError``, ``DataprepError``,
``PretrainedError``, ``NonFiniteLossError``), and each command-line entry (``fastforec/train.py``,
``fastforec``, ``dataprep``) catches it once: it prints ``error: <message>`` to stderr and exits
with :data:`EXIT_USER_ERROR`, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_USER_ERROR = 2  # argparse exits with 2 on bad usage as well


class UserError(Exception):
    """Bad input or a damaged file; the message says what to change."""


def report_user_error(error: UserError, *, prefix: str = "") -> int:
    """Print the message the way every entry point does and return the exit code."""
    print(f"{prefix}error: {error}", file=sys.stderr)
    return EXIT_USER_ERROR


FOREIGN_SHOWN = 3  # names quoted when a command refuses a folder (or an archive) of someone else's files


def foreign_entries(folder: Path, *, ours: tuple[str, ...] = ()) -> str:
    """The visible entries of ``folder`` not named in ``ours``, as a message quotes them ("a, b, c
    and 4 more"); "" when there are none (hidden ones, .DS_Store and the like, do not count)."""
    return quote_names(sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and p.name not in ours))


def quote_names(names: list[str]) -> str:
    """The first few of ``names`` as a message quotes them: "a, b, c and 4 more"."""
    more = f" and {len(names) - FOREIGN_SHOWN} more" if len(names) > FOREIGN_SHOWN else ""
    return ", ".join(names[:FOREIGN_SHOWN]) + more


def check_output_dir(path: str | Path, option: str) -> Path:
    """Fail early, naming ``option`` and the path, when ``path`` cannot become a writable directory.

    Creates nothing: the nearest existing ancestor must be a directory we may write into (or
    ``path`` itself, when it exists). Checked before any work so that a typo does not cost a
    conversion or a training run, and no output is left half-written.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is" if probe == path else f"lies under '{probe}', which is"
        raise UserError(f"{option} '{path}' {what} a regular file, not a directory; choose another {option}")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" ('{probe}' is not writable)"
        raise UserError(f"{option} '{path}' cannot be written{where}; choose a writable {option}")
    return path


def check_output_file(path: str | Path, option: str) -> Path:
    """Fail before any work when a file output names an existing directory (the write would fail
    only at the end, after an evaluation or an export)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} '{path}' is a directory; {option} takes a file path (a new file inside it, "
                        f"for instance)")
    return path


def output_error(error: OSError, path: str | Path, option: str) -> UserError:
    """An OSError from writing under a user-chosen output path, as a UserError naming it."""
    reason = error.strerror or type(error).__name__
    target = error.filename if error.filename is not None else path
    return UserError(f"{option} '{path}': cannot write '{target}' ({reason}); choose a writable {option} "
                     f"or free some space")
