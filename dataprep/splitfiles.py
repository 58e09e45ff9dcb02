"""Split lists: read U2PL / UniMatch partition files, write U2PL ones.

Formats (one entry per line, blank lines ignored, the last line may lack its newline):

- U2PL: one field per line, an id (VOC: ``2007_000033``) or an image path relative to the
  dataset root (Cityscapes: ``leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png``).
- UniMatch: two fields per line, image path then mask path
  (``JPEGImages/x.jpg SegmentationClass/x.png``).

The format is detected per file; a file mixing both is an error, since it is almost always
a concatenation mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastforec.atomic import atomic_write_bytes

from .errors import DataprepError

FORMAT_U2PL = "u2pl"
FORMAT_UNIMATCH = "unimatch"
_FIELDS_TO_FORMAT = {1: FORMAT_U2PL, 2: FORMAT_UNIMATCH}


@dataclass(frozen=True)
class ListEntry:
    """The first field of one line (an id or an image path) and where it came from."""

    token: str
    file: Path
    line: int

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class SplitList:
    path: Path
    format: str
    entries: tuple[ListEntry, ...]


def read_split_list(path: Path) -> SplitList:
    """Parse one list file; raise DataprepError naming the file (and line) when it is unusable."""
    if not path.is_file():
        raise DataprepError(f"split list '{path}' does not exist (or is not a file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataprepError(f"split list '{path}' cannot be read as UTF-8 text ({e})") from None
    entries: list[ListEntry] = []
    first_line_of: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in _FIELDS_TO_FORMAT:
            raise DataprepError(f"{path}:{number}: {len(fields)} fields; expected 1 (U2PL: an id or image path) "
                                f"or 2 (UniMatch: image path and mask path)")
        first_line_of.setdefault(len(fields), number)
        entries.append(ListEntry(token=fields[0], file=path, line=number))
    if len(first_line_of) > 1:
        raise DataprepError(f"{path}: mixes U2PL lines (1 field, e.g. line {first_line_of[1]}) and UniMatch lines "
                            f"(2 fields, e.g. line {first_line_of[2]}); use one format per file")
    fmt = _FIELDS_TO_FORMAT[next(iter(first_line_of))] if first_line_of else FORMAT_U2PL
    return SplitList(path=path, format=fmt, entries=tuple(entries))


def write_split_list(path: Path, tokens: list[str]) -> None:
    """Write a U2PL list (one token per line) atomically."""
    atomic_write_bytes(path, "".join(f"{t}\n" for t in tokens).encode("utf-8"))
