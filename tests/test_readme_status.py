"""README's status table agrees with itself: one row per part, each status from the table's
vocabulary, and no part called "not started" while another row reports it done."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
STATUSES = ("done", "ready", "partial", "not started")


def _rows() -> list[tuple[str, str]]:
    text = README.read_text()
    table = text[text.index("## Status"):].split("\n\n")[1]
    rows = [line.split(" | ", 1) for line in table.splitlines()[2:]]
    return [(part.strip("| ").strip(), status.strip("| ").strip()) for part, status in rows]


def _words(part: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", part.lower()) if len(w) > 2}


def test_the_status_table_agrees_with_itself() -> None:
    rows = _rows()
    assert len(rows) > 5
    parts = [part for part, _ in rows]
    assert len(parts) == len(set(parts)), "a part listed twice"
    for part, status in rows:
        assert status.startswith(STATUSES), f"{part!r}: status {status!r} does not start with one of {STATUSES}"
    done = [_words(part) for part, status in rows if status.startswith(("done", "ready"))]
    for part, status in rows:
        if status.startswith("not started"):
            clash = [w for w in done if _words(part) <= w]
            assert not clash, f"{part!r} is 'not started' but another row reports it done"
