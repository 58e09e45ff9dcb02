"""Errors and rejected samples.

Every message names the file and says what is wrong, so a user can fix the input without
reading the code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fastforec.errors import UserError

# How many problems one error message lists before it summarises the rest.
MAX_PROBLEMS_SHOWN = 20


class DataprepError(UserError):
    """Bad input or a failed step. The CLI prints the message and exits with EXIT_BAD_INPUT."""


@dataclass(frozen=True)
class Rejection:
    """One bad sample: which split and id, which file, and what is wrong with it."""

    split: str
    key: str
    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem} (split '{self.split}', id '{self.key}')"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def problems_error(problems: list[Rejection], *, hint: str) -> DataprepError:
    """One error listing (up to MAX_PROBLEMS_SHOWN of) ``problems``, ending with ``hint``."""
    lines = [str(p) for p in problems[:MAX_PROBLEMS_SHOWN]]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    noun = "problem" if len(problems) == 1 else "problems"
    return DataprepError(f"{len(problems)} input {noun}:\n  " + "\n  ".join(lines) + f"\n{hint}")
