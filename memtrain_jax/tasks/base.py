"""What a task is: the items a job trains and evaluates on, their stream, how one batch of them is rolled out,
the supervised format warm-up it offers, and its turns' lengths. One module per task, registered by name.

A task receives the job's shared pieces (`AgentSetup`: mesh, policy, tokenizer, prompts, sampler, agent
settings) as its first argument and owns its data; `AgentSetup` forwards its task methods here, so no code
outside a task's module branches on the task's name. Adding a task is one module with a `@register`ed class
and one config line (`config.task`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import TrainingSequences
from memtrain_jax.agent.rollout import RolloutBatch

if TYPE_CHECKING:
    from memtrain_jax.tasks.setup import AgentSetup

Log = Callable[[str], None]


class Task(Protocol):
    """One task (see the module docstring). Batches are dicts of [B] arrays with at least "episode_id"."""

    name: ClassVar[str]
    # True when `format_examples` builds the supervised warm-up (train.format_steps > 0 needs it).
    has_format_warmup: ClassVar[bool]

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, pool: list, agent: AgentConfig, *, log: Log) -> Task:
        """The task with its data prepared (caches written by process 0 first)."""

    def num_items(self) -> int:
        """Items of the task: pivot slots, or QA records (training then held-out)."""

    def split_items(self, setup: AgentSetup, eval_episodes: int) -> tuple[int, list[int]]:
        """(training slots: the first items, held-out evaluation slots)."""

    def dataset(self, setup: AgentSetup, **kw: Any) -> grain.IterDataset:
        """This host's stream of training batches."""

    def eval_batch(self, setup: AgentSetup, slots: Any) -> dict[str, np.ndarray]:
        """The fixed batch of items `slots` (epoch 0)."""

    def rollout(
        self, setup: AgentSetup, batch: Mapping[str, np.ndarray], step: int, policy: Any, agent: AgentConfig
    ) -> RolloutBatch | None:
        """One rollout of a batch; None when no item of it is usable."""

    def format_examples(
        self, setup: AgentSetup, batch: Mapping[str, np.ndarray], rng: np.random.Generator, **options: Any
    ) -> tuple[TrainingSequences, int, int]:
        """(the supervised warm-up's examples of a batch, items used, items skipped); options are the train
        section's format_* settings and `max_target`, `stop_id`."""

    def rollout_metrics(self, result: RolloutBatch) -> dict[str, float]:
        """The task's own figures of a rollout, beside the credit metrics ({} for none)."""

    def max_problem_tokens(self, setup: AgentSetup) -> int:
        """The longest question in tokens."""

    def sequence_lengths(self, setup: AgentSetup) -> dict[str, int]:
        """The longest prompt + reply of each kind of turn, in tokens."""


TASK_TYPES: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: makes a task selectable as `config.task = cls.name`."""
    TASK_TYPES[cls.name] = cls
    return cls


def task_type(name: str) -> type:
    """The registered task called `name`; an unknown name is an error showing it and the choices."""
    if name not in TASK_TYPES:
        raise ValueError(f"config.task={name!r}; choose one of {tuple(TASK_TYPES)}.")
    return TASK_TYPES[name]


def process_0_first(build: Callable[[], Any]) -> Any:
    """`build()` (which writes the shared data caches when they are missing) on process 0, then on the other
    processes once it is done: one process writes a cache, every process reads it."""
    if jax.process_count() == 1:
        return build()
    result = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("memtrain: data caches ready")
    return result if jax.process_index() == 0 else build()
