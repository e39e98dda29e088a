"""Answer extraction and scoring (stable public API, documented in the README).

extract_boxed(text) -> str | None          content of the last \\boxed{...}
exact_match(prediction, golds) -> float    the training verifier, 1.0 or 0.0
qa_scores(prediction, golds) -> dict       SQuAD-normalised em, sub_em, f1
objective_score(prediction, golds, sep)    search QA's verifier: EM averaged over sub-questions
objective_scores(prediction, golds, sep)   the same, one EM a sub-question
score_memory_agent(batch, agent), score_search(batch, golds, sep)
                                           a rollout's answers and verifier scores (rollouts return text only)
REWARDS, reward(name)                      the reward columns R_E may weigh (agent.rewards), and their registry
reward_columns(...), combine(...)          a rollout's columns and their weighted sum
"""

from memtrain_jax.rewards.answers import (
    EXTRACTORS,
    exact_match,
    extract_answer,
    extract_boxed,
    normalize_squad,
    normalize_strict,
    objective_score,
    objective_scores,
    qa_scores,
)
from memtrain_jax.rewards.columns import (
    BUILTIN_COLUMNS,
    REWARDS,
    RewardFn,
    check_weights,
    combine,
    reward,
    reward_columns,
)
from memtrain_jax.rewards.scoring import score_memory_agent, score_search

__all__ = [
    "EXTRACTORS",
    "BUILTIN_COLUMNS",
    "REWARDS",
    "RewardFn",
    "check_weights",
    "combine",
    "reward",
    "reward_columns",
    "exact_match",
    "extract_answer",
    "extract_boxed",
    "normalize_squad",
    "normalize_strict",
    "objective_score",
    "objective_scores",
    "score_memory_agent",
    "score_search",
    "qa_scores",
]
