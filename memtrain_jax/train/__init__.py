"""GRPO training of the memory agent: packing, the jitted update, run checkpoints, metrics and the loop."""

from memtrain_jax.train.batching import LengthBuckets, MicroBatch, SharedPromptBatch, pack, pack_shared
from memtrain_jax.train.checkpoints import RunCheckpointer, WorkdirMismatchError, check_workdir
from memtrain_jax.train.learner import OBJECTIVES, Learner, OptimConfig, TrainState, loss_config_from, loss_sums
from memtrain_jax.train.metrics import MetricWriter, read_metrics
from memtrain_jax.train.trainer import TrainConfig, Trainer, run_identity

__all__ = [
    "OBJECTIVES",
    "LengthBuckets",
    "Learner",
    "MetricWriter",
    "MicroBatch",
    "OptimConfig",
    "RunCheckpointer",
    "SharedPromptBatch",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "WorkdirMismatchError",
    "check_workdir",
    "loss_config_from",
    "loss_sums",
    "pack",
    "pack_shared",
    "read_metrics",
    "run_identity",
]
