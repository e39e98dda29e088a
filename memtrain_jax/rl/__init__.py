"""GRPO math: group advantages and DAPO filtering (the clipped loss lives beside them)."""

from memtrain_jax.rl.advantages import ADVANTAGE_NORMALISATIONS, group_advantages, uniform_groups

__all__ = ["ADVANTAGE_NORMALISATIONS", "group_advantages", "uniform_groups"]
