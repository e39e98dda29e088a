"""The memory agent's rollout and turn lengths for the tasks that read with it (memtrain, long_qa): the setup's
builder, tokenizer, extractor and window handed to `agent.rollout`."""

from __future__ import annotations

from typing import Any

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.rollout import RolloutBatch, rollout
from memtrain_jax.rewards import score_memory_agent


def memory_rollout(
    setup: Any, episodes: list, skipped: int, step: int, policy: Any, agent: AgentConfig
) -> RolloutBatch | None:
    """The memory agent's rollout of episodes (MemTrain and long-text QA), scored by exact match of its boxed
    answers; None without an episode."""
    if not episodes:
        return None
    result = rollout(
        policy,
        episodes,
        setup.builder,
        setup.tokenizer,
        agent,
        seed=setup.config.seed,
        step=step,
        extractor=setup.extractor,
        window=setup.policy.model_config.max_position_embeddings,
        episodes_skipped=skipped,
    )
    return score_memory_agent(result, agent)


def memory_agent_lengths(setup: Any, problem: int) -> dict[str, int]:
    """The memory agent's turn lengths (memory, final, recall when probes are on) for a question of `problem`
    tokens."""
    overhead = {name: setup.builder.overhead(name) for name in ("memory", "final", "recall")}
    lengths = setup.agent.prompt_lengths(overhead, problem, len(setup.builder.no_memory_ids))
    if not setup.agent.imr:
        lengths.pop("recall")
    return lengths
