"""MemTrain's task: masked-Wikipedia documents (the data pipeline) read by the memory agent, with recall probes;
the format warm-up teaches the boxed answer and note-taking from the same episodes (tasks/format.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import ml_collections
import numpy as np

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import TrainingSequences
from memtrain_jax.agent.rollout import RolloutBatch, episodes_from_batch
from memtrain_jax.data import stream
from memtrain_jax.data.prepare import PreparedData, prepare_data
from memtrain_jax.tasks.base import Log, process_0_first, register
from memtrain_jax.tasks.format import format_examples
from memtrain_jax.tasks.memory_agent import memory_agent_lengths, memory_rollout


@register
class MemTrainTask:
    name = "memtrain"
    has_format_warmup = True

    def __init__(self, config: ml_collections.ConfigDict, prepared: PreparedData):
        self.config, self.prepared = config, prepared

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, pool: list, agent: AgentConfig, *, log: Log) -> MemTrainTask:
        return cls(config, process_0_first(lambda: prepare_data(config.data, pool=pool, log=log)))

    def num_items(self) -> int:
        return self.prepared.num_pivots

    def split_items(self, setup: Any, eval_episodes: int) -> tuple[int, list[int]]:
        """The last pivots whose episodes are usable, `eval_episodes` of them (an episode whose every mask falls
        beyond `max_chunks` is skipped by the rollout, so it would not be evaluated) or as many as there are
        while at least one pivot trains."""
        wanted, first, slots = max(0, eval_episodes), self.num_items(), []
        while len(slots) < wanted and first > 1:
            block = list(range(max(1, first - (wanted - len(slots))), first))
            usable = self.eval_batch(setup, block)["usable"]
            slots += [s for s, ok in zip(block, usable, strict=True) if ok][::-1][: wanted - len(slots)]
            first = block[0] if len(slots) < wanted else min(slots)
        return first, sorted(slots)

    def dataset(self, setup: Any, **kw: Any) -> grain.IterDataset:
        """Episodes whose chunks are cut in the policy's tokenizer."""
        return stream.make_dataset(self.config.data, self.prepared, setup.tokenizer, **kw)

    def eval_batch(self, setup: Any, slots: Any) -> dict[str, np.ndarray]:
        return stream.episode_batch(self.config.data, self.prepared, setup.tokenizer, slots)

    def episodes(self, setup: Any, batch: Mapping[str, np.ndarray]) -> tuple[list, int]:
        """(usable episodes, number skipped) of a batch."""
        return episodes_from_batch(batch, setup.tokenizer)

    def rollout(
        self, setup: Any, batch: Mapping[str, np.ndarray], step: int, policy: Any, agent: AgentConfig
    ) -> RolloutBatch | None:
        episodes, skipped = self.episodes(setup, batch)
        return memory_rollout(setup, episodes, skipped, step, policy, agent)

    def format_examples(
        self, setup: Any, batch: Mapping[str, np.ndarray], rng: np.random.Generator, **options: Any
    ) -> tuple[TrainingSequences, int, int]:
        episodes, skipped = self.episodes(setup, batch)
        examples = format_examples(
            episodes,
            setup.builder,
            setup.tokenizer,
            setup.agent,
            options["stop_id"],
            setup.extractor,
            rng,
            max_target=options["max_target"],
            memory_target=options["memory_target"],
            recall_entities=options["recall_entities"],
        )
        return examples, len(episodes), skipped

    def rollout_metrics(self, result: RolloutBatch) -> dict[str, float]:
        return {}

    def max_problem_tokens(self, setup: Any) -> int:
        return len(setup.builder.problem_ids)  # its one problem

    def sequence_lengths(self, setup: Any) -> dict[str, int]:
        return memory_agent_lengths(setup, self.max_problem_tokens(setup))
