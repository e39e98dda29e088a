"""The `rl` config section, typed once: every consumer (credit, the loss, the trainer's update loop) reads it here."""

from __future__ import annotations

import dataclasses
from typing import Any

from memtrain_jax.config import UsageError, section_values
from memtrain_jax.rl.advantages import ADVANTAGE_NORMALISATIONS
from memtrain_jax.rl.loss import LossConfig


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Advantages (`advantage_normalisation`, `negative_weight`, `dapo_filter`), the loss (clip, dual clip, KL,
    aggregation) and the update schedule (`updates_per_batch` mini-batches, `recompute_old_logprobs`);
    configs/memtrain.py explains each value."""

    advantage_normalisation: str = "none"
    negative_weight: float = 1.0
    dapo_filter: bool = True
    loss_aggregation: str = "sequence_mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0
    kl_coef: float = 1e-3
    kl_estimator: str = "k3"
    updates_per_batch: int = 1
    recompute_old_logprobs: bool = False

    def __post_init__(self):
        if self.advantage_normalisation not in ADVANTAGE_NORMALISATIONS:
            raise UsageError(
                f"Unknown rl.advantage_normalisation {self.advantage_normalisation!r}; "
                f"choose one of {ADVANTAGE_NORMALISATIONS}."
            )
        if not 0.0 <= self.negative_weight <= 1.0:
            raise UsageError(
                f"rl.negative_weight must be in [0, 1] (1 = GRPO, 0 = positive only), got {self.negative_weight}."
            )
        if int(self.updates_per_batch) < 1:
            raise UsageError(f"rl.updates_per_batch must be >= 1, got {self.updates_per_batch}.")
        self.loss  # noqa: B018 (the loss settings are checked where they are defined)

    @classmethod
    def from_config(cls, section: Any) -> RLConfig:
        values = section_values(cls, section, "rl")
        for name in ("clip_low", "clip_high", "dual_clip", "kl_coef", "negative_weight"):
            if name in values:
                values[name] = float(values[name])
        for name in ("dapo_filter", "recompute_old_logprobs"):
            if name in values:
                values[name] = bool(values[name])
        if "updates_per_batch" in values:
            values["updates_per_batch"] = int(values["updates_per_batch"])
        return cls(**values)

    @property
    def loss(self) -> LossConfig:
        return LossConfig(
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            dual_clip=self.dual_clip,
            kl_coef=self.kl_coef,
            kl_estimator=self.kl_estimator,
            aggregation=self.loss_aggregation,
        )
