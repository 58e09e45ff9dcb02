"""Statistics of a study: the mean over seeds with its Student-t confidence interval, and paired
differences between two methods (or formats) over the seeds both have.

The t quantile is computed (scipy is not a dependency): bisection on Student's t distribution
function, written with the regularized incomplete beta function (a continued fraction, as in
Numerical Recipes' ``betacf``). ``t_critical`` rounds it to the three decimals of the standard
printed table, which is what every report so far used: their intervals stay the same.
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Any, Sequence

CONFIDENCE = 0.95
CRITICAL_DECIMALS = 3  # those of the standard t table (12.706, 4.303, ...) the reports were made with
_CF_EPS = 1e-15
_CF_TINY = 1e-300
_CF_MAX_TERMS = 1000


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), for
    ``x < (a + 1) / (a + b + 2)`` where it converges quickly."""
    def nonzero(v: float) -> float:
        return v if abs(v) > _CF_TINY else _CF_TINY

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, _CF_MAX_TERMS + 1):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / nonzero(1.0 + even * d)
        c = nonzero(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / nonzero(1.0 + odd * d)
        c = nonzero(1.0 + odd / c)
        h *= d * c
        if abs(d * c - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection to double precision."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):  # the interval is one float apart
            return mid
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid


@functools.lru_cache(maxsize=None)  # a bisection per call: each study asks for a few df, many times
def t_critical(df: int) -> float:
    """Two-sided ``CONFIDENCE`` critical value of Student's t with ``df`` degrees of freedom, to
    the standard table's three decimals (12.706 for 1 df, 2.042 for 30)."""
    if df < 1:
        raise ValueError(f"t_critical needs df >= 1, got {df}")
    return round(student_t_quantile(0.5 + CONFIDENCE / 2, df), CRITICAL_DECIMALS)


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and the t-based 95 % confidence interval of the mean (None for n < 2)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "std": None, "n": n, "ci_low": None, "ci_high": None}
    std = statistics.stdev(values)
    half = t_critical(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """a - b over the seeds both have, with the 95 % interval of the mean difference."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return {**mean_ci([a[s] - b[s] for s in seeds]), "seeds": seeds}
