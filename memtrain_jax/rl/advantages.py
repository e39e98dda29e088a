"""Group-relative advantages (GRPO / Dr. GRPO) and DAPO's zero-variance group filter.

Every sample belongs to one group (the G rollouts of one prompt); its advantage is its reward
relative to the group. Pure jnp functions of flat arrays with integer group ids, so they jit and
run on host NumPy inputs alike; `num_groups` is static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ADVANTAGE_NORMALISATIONS = ("none", "std")


def _group_stats(rewards: jax.Array, group_ids: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mean [G], sum of squared deviations [G], count [G]) of rewards per group."""
    ones = jnp.ones_like(rewards)
    count = jax.ops.segment_sum(ones, group_ids, num_groups)
    mean = jax.ops.segment_sum(rewards, group_ids, num_groups) / jnp.maximum(count, 1.0)
    squares = jax.ops.segment_sum(jnp.square(rewards - mean[group_ids]), group_ids, num_groups)
    return mean, squares, count


def group_advantages(
    rewards: jax.Array,
    group_ids: jax.Array,
    num_groups: int,
    normalisation: str = "none",
    negative_weight: float = 1.0,
    eps: float = 1e-6,
) -> jax.Array:
    """Advantage of each sample: A_i = r_i - mean_{j in g(i)} r_j.

    normalisation "none" is Dr. GRPO (the paper: no division by the group's spread); "std" is GRPO,
    A_i / (std_{g(i)} + eps) with the unbiased std (ddof = 1, as verl and TRL; 0 for a group of one).
    negative_weight scales the advantages below 0 (`weigh_negatives`; 1 = GRPO, 0 = positive samples only).
    rewards: [n] float; group_ids: [n] int in [0, num_groups). Returns [n] float32.
    """
    if normalisation not in ADVANTAGE_NORMALISATIONS:
        raise ValueError(
            f"Unknown advantage normalisation {normalisation!r}; choose one of {ADVANTAGE_NORMALISATIONS}."
        )
    rewards = jnp.asarray(rewards, jnp.float32)
    group_ids = jnp.asarray(group_ids, jnp.int32)
    mean, squares, count = _group_stats(rewards, group_ids, num_groups)
    advantages = rewards - mean[group_ids]
    if normalisation == "std":
        std = jnp.sqrt(squares / jnp.maximum(count - 1.0, 1.0))
        advantages = advantages / (std[group_ids] + eps)
    return weigh_negatives(advantages, negative_weight)


def weigh_negatives(advantages: jax.Array, weight: float) -> jax.Array:
    """A_i' = A_i where A_i >= 0, else weight * A_i: how much the samples worse than their group's mean push down.

    weight 1 is GRPO; weight 0 keeps only positive sample reinforcement (PSR: the better samples are raised,
    nothing is pushed down; Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM
    Reasoning", find PSR sharpens pass@1 while negative samples keep pass@k). advantages: [n]. Returns [n] float32.
    """
    advantages = jnp.asarray(advantages, jnp.float32)
    return jnp.where(advantages < 0, weight * advantages, advantages)


def uniform_groups(rewards: jax.Array, group_ids: jax.Array, num_groups: int) -> jax.Array:
    """[num_groups] bool: True where every reward of the group is the same (zero variance; an empty group too).

    DAPO drops such groups: their advantages are all zero, so they carry no learning signal but still
    cost compute and dilute a token-mean loss.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    group_ids = jnp.asarray(group_ids, jnp.int32)
    high = jax.ops.segment_max(rewards, group_ids, num_groups)
    low = jax.ops.segment_min(rewards, group_ids, num_groups)
    return ~(high > low)
