"""Mean and 95 % confidence interval over seeds, with Student's t (no scipy needed).

A setting run with n seeds gives n values of a metric; the interval is

    mean +- t_{0.975, n-1} * s / sqrt(n)          s = the sample standard deviation (ddof = 1)

the textbook small-sample interval for a mean (Student 1908; e.g. NIST/SEMATECH e-Handbook of
Statistical Methods, section 7.2.2.1). With n = 1 there is no interval: the value is shown alone.
NaN and missing values (an FA that the task does not define, a job without metrics) are left out
of the mean and of n, and the summary says how many were left out.

The t quantile comes from the closed form of Student's t distribution for an integer number of
degrees of freedom (Abramowitz & Stegun, Handbook of Mathematical Functions, 26.7.3-26.7.4), which
gives P(|T| <= t) as a finite sum; the quantile is found by bisection on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

CONFIDENCE = 0.95


def two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` degrees of freedom (A&S 26.7.3 for odd df, 26.7.4 for even)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        if df == 1:
            return 2.0 * theta / math.pi
        term = total = cos  # cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ... up to cos^(df-2)
        for k in range(1, (df - 3) // 2 + 1):
            term *= (2 * k) / (2 * k + 1) * cos * cos
            total += term
        return 2.0 / math.pi * (theta + sin * total)
    term = total = 1.0  # 1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2)
    for k in range(1, (df - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * cos * cos
        total += term
    return sin * total


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """t_{(1+confidence)/2, df}: the half-width multiplier of a two-sided ``confidence`` interval."""
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got {df}")
    low, high = 0.0, 1.0
    while two_sided_mass(high, df) < confidence:
        high *= 2.0
    for _ in range(200):  # bisection to machine precision; the mass is increasing in t
        mid = (low + high) / 2.0
        if two_sided_mass(mid, df) < confidence:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


@dataclass(frozen=True)
class Summary:
    """One metric of one setting: the mean over the values that exist, its 95 % CI half-width."""

    mean: float | None  # None: no job of the setting has the value
    ci95: float | None  # None: fewer than two values
    n: int  # values used
    total: int  # jobs of the setting (n < total: some were NaN or missing)

    @property
    def left_out(self) -> int:
        return self.total - self.n


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(values: Iterable[float | None]) -> Summary:
    """Mean and Student's t CI of the finite ``values`` (NaN and None are left out and counted)."""
    values = list(values)
    kept = [float(v) for v in values if finite(v)]
    n = len(kept)
    if n == 0:
        return Summary(None, None, 0, len(values))
    mean = math.fsum(kept) / n
    if n == 1:
        return Summary(mean, None, 1, len(values))
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (n - 1))
    return Summary(mean, t_quantile(n - 1) * s / math.sqrt(n), n, len(values))
