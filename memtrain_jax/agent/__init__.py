"""The memory agent: prompts in token space, batched multi-turn rollouts, recall probes and GRPO credit;
downstream long-text QA (with the full-context baseline) and the search-QA agent. What it is trained on (the
tasks, and the job's built pieces, AgentSetup) lives in memtrain_jax.tasks."""

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import KIND_IDS, TrainingSequences, assign_credit, trajectory_rewards
from memtrain_jax.agent.policy import CallStats, Policy, SamplerPolicy
from memtrain_jax.agent.prompts import PromptBuilder, PromptConfig, Template, TemplateError, load_template
from memtrain_jax.agent.qa import (
    QAAnswer,
    evaluate_long_qa,
    format_paired,
    format_table,
    read_full_context,
    read_with_memory,
)
from memtrain_jax.agent.rollout import (
    AgentTrajectory,
    Episode,
    Reply,
    RolloutBatch,
    Trajectory,
    call_seed,
    episodes_from_batch,
    rollout,
)
from memtrain_jax.agent.scripted import ScriptedPolicy
from memtrain_jax.agent.search import SearchConfig, SearchTrajectory, evaluate_search, parse_action, search_rollout

__all__ = [
    "KIND_IDS",
    "QAAnswer",
    "SearchConfig",
    "evaluate_long_qa",
    "evaluate_search",
    "format_paired",
    "format_table",
    "SearchTrajectory",
    "parse_action",
    "read_full_context",
    "read_with_memory",
    "search_rollout",
    "AgentConfig",
    "AgentTrajectory",
    "CallStats",
    "Episode",
    "Policy",
    "PromptBuilder",
    "PromptConfig",
    "Reply",
    "RolloutBatch",
    "SamplerPolicy",
    "ScriptedPolicy",
    "Template",
    "TemplateError",
    "TrainingSequences",
    "Trajectory",
    "assign_credit",
    "call_seed",
    "episodes_from_batch",
    "load_template",
    "rollout",
    "trajectory_rewards",
]
