"""Intervals against SciPy: Wilson (binomtest), percentile bootstrap (scipy.stats.bootstrap), paired differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from memtrain_jax import stats


@pytest.mark.parametrize(("k", "n"), [(0, 6), (1, 6), (3, 6), (6, 6), (17, 64), (50, 64), (1, 1000)])
def test_wilson_equals_scipy(k, n):
    expected = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    np.testing.assert_allclose(stats.wilson_interval(k, n), (expected.low, expected.high), rtol=0, atol=1e-9)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_interval_agrees_with_scipy(seed):
    x = np.random.default_rng(seed).gamma(2.0, 0.3, 80)
    ours = stats.bootstrap_interval(x, resamples=20000, seed=seed)
    theirs = scipy_stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", random_state=seed)
    ci = theirs.confidence_interval
    np.testing.assert_allclose(ours, (ci.low, ci.high), atol=0.01)  # two Monte Carlo estimates of one interval
    assert ours[0] < x.mean() < ours[1]
    assert stats.bootstrap_interval(x, seed=3) == stats.bootstrap_interval(x, seed=3)  # a seed fixes it


def test_paired_difference_cancels_shared_item_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1.0, 64)  # shared by both arms: dominates each arm's spread
    a = difficulty + rng.normal(0, 0.05, 64)
    b = a + 0.1 + rng.normal(0, 0.05, 64)
    mean, lo, hi = stats.paired_difference(a, b)
    np.testing.assert_allclose(mean, (b - a).mean(), rtol=1e-12)
    assert 0 < lo < 0.1 < hi  # paired: the 0.1 shift is resolved
    ua, ub = stats.bootstrap_interval(a), stats.bootstrap_interval(b)
    assert ua[1] > ub[0]  # unpaired intervals overlap: the same data cannot show it
    d = stats.paired_difference([0.0, 1.0, math.nan], [1.0, 1.0, 0.0])  # a nan item is left out of both arms
    assert d[0] == 0.5
    assert stats.paired_difference(a, a) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same items"):
        stats.paired_difference([1.0], [1.0, 0.0])


def test_mean_with_interval_picks_wilson_for_outcomes():
    mean, lo, hi, n = stats.mean_with_interval([1.0, 0.0, None, 1.0, 0.0], binary=True)
    assert (mean, n) == (0.5, 4) and (lo, hi) == stats.wilson_interval(2, 4)
    assert stats.format_interval(0.25, 0.1, 0.5) == "0.250 [0.100, 0.500]"


def test_eval_band_is_the_wilson_interval_of_each_evaluation():
    from memtrain_jax.train.plots import eval_band

    records = [
        {"step": 0, "acc_e2e": 0.25, "items": {"acc_e2e": [1.0, 0.0, 0.0, 0.0]}},
        {"step": 4, "acc_e2e": 0.5},  # an older record without items: no band there
        {"step": 8, "acc_e2e": 2 / 3, "items": {"acc_e2e": [1.0, 1.0, 0.0]}},
    ]
    steps, lo, hi = eval_band(records, "acc_e2e")
    np.testing.assert_array_equal(steps, [0, 8])
    np.testing.assert_allclose([lo[0], hi[0]], stats.wilson_interval(1, 4))
    np.testing.assert_allclose([lo[1], hi[1]], stats.wilson_interval(2, 3))
    assert eval_band(records, "acc_recall") is None
