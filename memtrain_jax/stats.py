"""Intervals for the figures a run prints: Wilson for accuracies, percentile bootstrap for means, and the paired
bootstrap for the difference of two arms on the same items. Pure NumPy; a seed fixes every resample."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p = k / n:

    (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n);  (nan, nan) when n = 0.
    """
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - half) / denominator), min(1.0, (centre + half) / denominator)


def bootstrap_interval(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` [n]: the (1-level)/2 and (1+level)/2 quantiles of the
    means of `resamples` resamples with replacement; (nan, nan) when empty."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean(b - a), lo, hi): the difference of two arms scored on the same items [n] (item i of `a` and of `b`
    is the same held-out episode or question), with the percentile bootstrap interval that resamples items, so
    the arms' shared item difficulty cancels. Items where either value is nan are left out."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same items: shapes {a.shape} and {b.shape}.")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = b[keep] - a[keep]
    if d.size == 0:
        return math.nan, math.nan, math.nan
    lo, hi = bootstrap_interval(d, level=level, resamples=resamples, seed=seed)
    return float(d.mean()), lo, hi


def format_interval(value: float, lo: float, hi: float, digits: int = 3) -> str:
    """ "0.250 [0.112, 0.469]"."""
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def mean_with_interval(values: Sequence[float], *, binary: bool) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n) of the finite values: Wilson when they are 0/1 outcomes, else the bootstrap."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan, 0
    lo, hi = wilson_interval(float(x.sum()), x.size) if binary else bootstrap_interval(x)
    return float(x.mean()), lo, hi, int(x.size)
