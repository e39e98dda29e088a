"""Long-text QA as a training task: QA records read in long contexts of `qa.train_num_docs` documents by the
memory agent (distractors drawn by the episode's epoch). No format warm-up: it has no masked entity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.qa import qa_episode
from memtrain_jax.agent.rollout import Episode, RolloutBatch
from memtrain_jax.data import qa as qa_data
from memtrain_jax.tasks.base import register
from memtrain_jax.tasks.memory_agent import memory_agent_lengths, memory_rollout
from memtrain_jax.tasks.qa_records import QARecordsTask


@register
class LongQATask(QARecordsTask):
    name = "long_qa"
    has_format_warmup = False

    def episodes(self, setup: Any, batch: Mapping[str, np.ndarray]) -> tuple[list[Episode], int]:
        """The batch's records in their long contexts (none is ever skipped)."""
        episodes = []
        for episode_id, record in zip(batch["episode_id"], self.records(batch), strict=True):
            epoch = int(episode_id) // self.num_items()
            context = qa_data.build_context(
                record,
                self.qa.distractors,
                int(self.config.data.seed) + epoch,
                num_docs=int(self.config.qa.train_num_docs),
                header=self.config.data.document.header,
            )
            episodes.append(qa_episode(context, int(episode_id), setup.builder, setup.agent.chunk_size))
        return episodes, 0

    def rollout(
        self, setup: Any, batch: Mapping[str, np.ndarray], step: int, policy: Any, agent: AgentConfig
    ) -> RolloutBatch | None:
        episodes, skipped = self.episodes(setup, batch)
        return memory_rollout(setup, episodes, skipped, step, policy, agent)

    def format_examples(self, setup: Any, batch: Mapping[str, np.ndarray], rng: Any, **options: Any):
        raise ValueError(
            "the format warm-up builds MemTrain's masked-entity examples (memtrain) or MEM1's search turns "
            "(search_qa), none for task 'long_qa'; set train.format_steps to 0."
        )

    def rollout_metrics(self, result: RolloutBatch) -> dict[str, float]:
        return {}

    def max_problem_tokens(self, setup: Any) -> int:
        return max(len(setup.builder.encode_problem(r.question)) for r in self.all_records())

    def sequence_lengths(self, setup: Any) -> dict[str, int]:
        return memory_agent_lengths(setup, self.max_problem_tokens(setup))
