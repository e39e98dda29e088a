"""Group advantages and the zero-variance filter against an independent NumPy implementation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from memtrain_jax.config import UsageError
from memtrain_jax.rl import RLConfig, group_advantages, uniform_groups, weigh_negatives


def _numpy_reference(rewards, groups, normalisation, eps=1e-6):
    out = np.zeros_like(rewards, dtype=np.float64)
    for g in np.unique(groups):
        members = groups == g
        r = rewards[members].astype(np.float64)
        adv = r - r.mean()
        if normalisation == "std":
            std = r.std(ddof=1) if r.size > 1 else 0.0
            adv = adv / (std + eps)
        out[members] = adv
    return out


@pytest.mark.parametrize("normalisation", ["none", "std"])
@pytest.mark.parametrize("seed", range(4))
def test_group_advantages_match_numpy(normalisation, seed):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 7, 60)
    rewards = rng.choice([0.0, 0.5, 1.0, 1.5], size=60)
    ours = np.asarray(group_advantages(rewards, groups, 9, normalisation))  # groups 7, 8 are empty
    np.testing.assert_allclose(ours, _numpy_reference(rewards, groups, normalisation), rtol=1e-5, atol=1e-6)
    jitted = jax.jit(group_advantages, static_argnums=(2, 3))(rewards, groups, 9, normalisation)
    np.testing.assert_allclose(np.asarray(jitted), ours, rtol=1e-6, atol=1e-7)
    # Dr. GRPO advantages sum to zero within every group.
    for g in np.unique(groups):
        assert abs(ours[groups == g].sum()) < 1e-5


@pytest.mark.parametrize("weight", [0.0, 0.1, 1.0])
def test_weigh_negatives_scales_only_the_samples_below_their_group_mean(weight):
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 5, 40)
    rewards = rng.choice([0.0, 1.0], size=40)
    adv = _numpy_reference(rewards, groups, "none")
    ours = np.asarray(weigh_negatives(group_advantages(rewards, groups, 5), weight))
    np.testing.assert_allclose(ours, np.where(adv < 0, weight * adv, adv), rtol=1e-5, atol=1e-6)
    # group_advantages applies the same weight itself (how credit assignment calls it).
    np.testing.assert_array_equal(np.asarray(group_advantages(rewards, groups, 5, "none", weight)), ours)
    # Positive-only (weight 0): a group of binary rewards with k of n right gives each right sample 1 - k/n.
    if weight == 0.0:
        for g in np.unique(groups):
            r = rewards[groups == g]
            np.testing.assert_allclose(ours[groups == g], np.where(r > 0, 1 - r.mean(), 0.0), atol=1e-6)


def test_negative_weight_outside_zero_one_is_refused():
    with pytest.raises(UsageError, match="negative_weight.*-0.5"):
        RLConfig(negative_weight=-0.5)


def test_uniform_groups():
    rewards = np.asarray([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 2.0])
    groups = np.asarray([0, 0, 1, 1, 2, 2, 2, 3])
    expected = [True, False, True, True, True]  # group 3 has one member; group 4 is empty
    assert np.asarray(uniform_groups(rewards, groups, 5)).tolist() == expected


def test_bad_normalisation_name():
    with pytest.raises(ValueError, match="'zscore'"):
        group_advantages(np.zeros(2), np.zeros(2, int), 1, "zscore")
