"""What ``--checkpoint`` names, read without torch (so a typo fails before any heavy import):
a fastforec checkpoint file or run directory, an export, or a peer's file as ``source:path``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastforec.errors import UserError

PeerSource = Literal["unimatch", "u2pl", "unimatch_v2"]
PEER_SOURCES: tuple[str, ...] = ("unimatch", "u2pl", "unimatch_v2")
SPEC_SEPARATOR = ":"  # --checkpoint unimatch:best.pth
# how the command lines name a peer's checkpoint in their help: "unimatch:FILE, u2pl:FILE, ..."
PEER_SPEC_FORMS = ", ".join(f"{source}{SPEC_SEPARATOR}FILE" for source in PEER_SOURCES)


def split_spec(spec: str | Path) -> tuple[PeerSource | None, Path]:
    """``unimatch:best.pth`` -> ("unimatch", best.pth); any other text is a path."""
    text = str(spec)
    head, sep, rest = text.partition(SPEC_SEPARATOR)
    if sep and head in PEER_SOURCES:
        return head, Path(rest)  # type: ignore[return-value]
    return None, Path(text)


def check_exists(spec: str | Path) -> None:
    """Raise a UserError when the file or run directory ``spec`` names does not exist."""
    _, path = split_spec(spec)
    if not path.exists():
        raise UserError(f"checkpoint '{path}' does not exist")
