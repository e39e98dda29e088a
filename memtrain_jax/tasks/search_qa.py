"""Search QA (MEM1's loop): multi-objective QA records answered by the search agent over the pool (BM25 or
dense); the format warm-up plays MEM1's action format from the known answers (tasks/format.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import TrainingSequences
from memtrain_jax.agent.rollout import RolloutBatch
from memtrain_jax.agent.search import SearchConfig, search_metrics, search_rollout
from memtrain_jax.rewards import score_search
from memtrain_jax.tasks.base import register
from memtrain_jax.tasks.format import search_format_examples
from memtrain_jax.tasks.qa_records import QARecordsTask, QATaskData


@register
class SearchQATask(QARecordsTask):
    name = "search_qa"
    has_format_warmup = True
    search = True

    def __init__(self, config: ml_collections.ConfigDict, qa: QATaskData, settings: SearchConfig):
        super().__init__(config, qa)
        self.settings = settings

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, pool: list, agent: AgentConfig, *, log: Any) -> SearchQATask:
        settings = SearchConfig.from_config(config.search, agent.group_size)  # checked before the data is built
        return cls(config, cls.load_records(config, pool, log), settings)

    def rollout(
        self, setup: Any, batch: Mapping[str, np.ndarray], step: int, policy: Any, agent: AgentConfig
    ) -> RolloutBatch | None:
        records = self.records(batch)
        result = search_rollout(
            policy,
            records,
            setup.builder,
            setup.tokenizer,
            self.qa.retriever,
            self.qa.corpus,
            dataclasses.replace(self.settings, group_size=agent.group_size),
            seed=self.config.seed,
            step=step,
            episode_ids=[int(i) for i in batch["episode_id"]],
        )
        return score_search(result, [r.golds for r in records], self.settings.separator)

    def format_examples(
        self, setup: Any, batch: Mapping[str, np.ndarray], rng: np.random.Generator, **options: Any
    ) -> tuple[TrainingSequences, int, int]:
        records = self.records(batch)
        examples = search_format_examples(
            records,
            setup.builder,
            setup.tokenizer,
            self.settings,
            self.qa.retriever,
            self.qa.corpus,
            options["stop_id"],
            max_target=self.settings.turn_tokens,
        )
        return examples, len(records), 0

    def rollout_metrics(self, result: RolloutBatch) -> dict[str, float]:
        return search_metrics(result)  # the action-format failures (malformed, no answer) and turns

    def max_problem_tokens(self, setup: Any) -> int:
        return max(len(setup.builder.encode_problem(r.question)) for r in self.all_records())

    def sequence_lengths(self, setup: Any) -> dict[str, int]:
        s, problem, no_memory = self.settings, self.max_problem_tokens(setup), len(setup.builder.no_memory_ids)
        return {
            "search": setup.builder.overhead("search")
            + problem
            + max(s.turn_tokens, no_memory)
            + s.information_tokens
            + s.turn_tokens
        }
