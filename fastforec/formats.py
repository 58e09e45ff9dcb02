"""Numbers for people: three significant digits, and durations in the units that matter.

Kept free of heavy imports: `dataprep` and the command-line help use it too."""

from __future__ import annotations

import math

SIGNIFICANT = 3


def sig(x: float, digits: int = SIGNIFICANT) -> str:
    """``x`` with ``digits`` significant digits, without exponent for everyday magnitudes."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude >= digits - 1:
        return f"{x:,.0f}"
    if magnitude < -4:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits - 1 - magnitude}f}"


def duration(seconds: float) -> str:
    """``2 d 03 h``, ``3 h 12 min``, ``4 min 05 s``, ``12 s``."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d} d {h:02d} h"
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {sec:02d} s"
    return f"{sec} s"


def count(n: int, noun: str) -> str:
    """"1 step", "600 steps": ``noun`` with an s unless ``n`` is 1."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
