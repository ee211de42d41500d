"""One-sided 95 % bounds on what a variant claims, and the samples a budget would need.

A claim is a figure the variant holds with 95 % confidence, not its measured mean. Figures that
are 1 or 0 per sample (top-1 agreement of a classifier, a decoded sequence equal or not, a label
right or wrong) get Wilson's interval for a binomial proportion (scipy); it stays honest at 0 or
n successes, where a normal interval collapses to a point. Figures that vary per sample (cosine,
IoU, agreement over a sentence's tokens) get their mean -+ :data:`Z` standard errors.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest, norm

# One-sided 95 %: the mean lowered by this many standard errors, or Wilson's two-sided 90 %
# interval, whose each side is 95 %.
Z = 1.645
LEVEL = 1.0 - 2.0 * float(norm.sf(Z))
MAX_SAMPLES = 10_000_000  # a sample count beyond this is reported as "more than"


def binary(values: np.ndarray) -> bool:
    """Whether every value is 0 or 1 (a proportion, bounded by Wilson's interval)."""
    return bool(np.isin(values, (0.0, 1.0)).all())


def rate_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson's interval for ``successes`` of ``n``: each bound one-sided 95 %.

    >>> [round(b, 4) for b in rate_interval(0, 100)]
    [0.0, 0.0263]
    >>> [round(b, 4) for b in rate_interval(190, 200)]
    [0.9181, 0.9699]
    """
    if n <= 0:
        return 0.0, 1.0
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


def mean_interval(values: np.ndarray) -> tuple[float, float]:
    """The mean -+ :data:`Z` standard errors of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, mean
    error = Z * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean - error, mean + error


def interval(values: np.ndarray) -> tuple[float, float]:
    """(lower, upper) one-sided 95 % bounds on the mean of per-sample ``values``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if binary(values):
        return rate_interval(int(values.sum()), len(values))
    return mean_interval(values)


def samples_for_rate(rate: float, limit: float) -> int | None:
    """Samples at which an observed ``rate`` (of disagreement, say) has its upper bound at or
    under ``limit``; None when no count can (the rate is at or over the limit).

    >>> samples_for_rate(0.0, 0.01)  # no disagreement seen: 268 samples bound it under 1 %
    268
    >>> samples_for_rate(0.005, 0.01)
    888
    """
    if rate >= limit:
        return None

    def fits(n: int) -> bool:
        return rate_interval(round(rate * n), n)[1] <= limit

    lo, hi = 1, 2
    while not fits(hi):
        if hi >= MAX_SAMPLES:
            return MAX_SAMPLES
        lo, hi = hi, hi * 2
    while lo + 1 < hi:  # fits(hi), not fits(lo) (a rounding may break monotony a little)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def samples_for_mean(mean: float, spread: float, limit: float) -> int | None:
    """Samples at which a mean ``mean`` with per-sample standard deviation ``spread`` has its
    upper bound at or under ``limit``; None when the mean is at or over it."""
    if mean >= limit:
        return None
    return max(2, math.ceil((Z * spread / (limit - mean)) ** 2))
