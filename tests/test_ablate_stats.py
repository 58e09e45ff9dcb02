"""`fastforec ablate`'s statistics (fastforec/ablate/stats.py): the computed Student-t quantile
against independent computations, and the critical values against the standard table the reports
were made with (the intervals must not move)."""

from __future__ import annotations

import math

import pytest

from fastforec.ablate.stats import mean_ci, regularized_incomplete_beta, student_t_cdf, student_t_quantile, t_critical

# The standard printed table of two-sided 95 % critical values for 1..30 degrees of freedom, as
# fastforec/ablate.py carried it by hand before the quantile was computed.
T_975_TABLE = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
               2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
               2.045, 2.042)


def _t_cdf_by_quadrature(t: float, df: int, intervals: int = 20000) -> float:
    """P(T <= t), t >= 0, by Simpson's rule on Student's density: no incomplete beta function."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    h = t / intervals
    total = density(0.0) + density(t) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, intervals))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df", range(1, len(T_975_TABLE) + 1))
def test_critical_values_are_the_table_s(df: int) -> None:
    assert t_critical(df) == T_975_TABLE[df - 1]  # exactly: the same float as the literal
    assert abs(t_critical(df) - T_975_TABLE[df - 1]) < 1e-6


@pytest.mark.parametrize("df", [1, 2, 3, 5, 8, 11, 20, 30, 40, 100])
def test_quantile_against_quadrature_of_the_density(df: int) -> None:
    q = student_t_quantile(0.975, df)
    assert _t_cdf_by_quadrature(q, df) == pytest.approx(0.975, abs=1e-10)
    assert student_t_cdf(q, df) == pytest.approx(0.975, abs=1e-14)


def test_quantile_against_closed_forms() -> None:
    for p in (0.6, 0.9, 0.975, 0.995):
        assert student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)  # Cauchy
        assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12)
        assert student_t_quantile(1 - p, 3) == pytest.approx(-student_t_quantile(p, 3), rel=1e-15)
    # many degrees of freedom: the normal quantile
    assert student_t_quantile(0.975, 10 ** 7) == pytest.approx(1.959963984540054, abs=1e-6)


def test_incomplete_beta_closed_forms() -> None:
    for x in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        assert regularized_incomplete_beta(1, 1, x) == pytest.approx(x, abs=1e-15)
        assert regularized_incomplete_beta(2, 1, x) == pytest.approx(x * x, abs=1e-15)
        assert regularized_incomplete_beta(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)),
                                                                         abs=1e-14)


def test_beyond_the_table_the_quantile_at_three_decimals() -> None:
    assert [t_critical(df) for df in (31, 40, 60, 120)] == [2.040, 2.021, 2.000, 1.980]
    with pytest.raises(ValueError, match="df >= 1"):
        t_critical(0)


def test_mean_ci_uses_the_critical_value() -> None:
    values = [3.0, 5.0, 4.0, 8.0, 1.0]
    ci = mean_ci(values)
    half = 2.776 * ci["std"] / math.sqrt(5)  # 4 df
    assert (ci["ci_low"], ci["ci_high"]) == (pytest.approx(4.2 - half, abs=1e-12), pytest.approx(4.2 + half, abs=1e-12))
