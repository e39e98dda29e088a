"""GRPO math: group advantages, DAPO filtering, the clipped surrogate, KL estimators and loss aggregation."""

from memtrain_jax.rl.advantages import ADVANTAGE_NORMALISATIONS, group_advantages, uniform_groups, weigh_negatives
from memtrain_jax.rl.config import RLConfig
from memtrain_jax.rl.loss import (
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    LossConfig,
    aggregate,
    aggregation_weights,
    clipped_surrogate,
    grpo_token_loss,
    kl_estimate,
)

__all__ = [
    "ADVANTAGE_NORMALISATIONS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "LossConfig",
    "RLConfig",
    "aggregate",
    "aggregation_weights",
    "clipped_surrogate",
    "group_advantages",
    "grpo_token_loss",
    "kl_estimate",
    "uniform_groups",
    "weigh_negatives",
]
