"""Group advantages and the zero-variance filter against an independent NumPy implementation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from memtrain_jax.rl import group_advantages, uniform_groups


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


def test_uniform_groups():
    rewards = np.asarray([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 2.0])
    groups = np.asarray([0, 0, 1, 1, 2, 2, 2, 3])
    expected = [True, False, True, True, True]  # group 3 has one member; group 4 is empty
    assert np.asarray(uniform_groups(rewards, groups, 5)).tolist() == expected


def test_bad_normalisation_name():
    with pytest.raises(ValueError, match="'zscore'"):
        group_advantages(np.zeros(2), np.zeros(2, int), 1, "zscore")
