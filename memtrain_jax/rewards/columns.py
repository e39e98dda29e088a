"""Reward columns: each reward is one named function of a scored trajectory; the config weighs them.

A scored rollout (rewards/scoring.py: the task's verifier fills `correct` and `recall_correct`) gives named
per-trajectory columns. The verifier is always one of them (`verifier`: EM of the final answer for MemTrain
and long-text QA, the per-objective score for search QA) and so is `recall`, the mean recall exact match of
the trajectory's G2 probe samples (0 without a probe). Any other registered column enters with the weight the
config gives it:

    R_E = verifier + lambda * recall + sum_c w_c * column_c        (lambda = agent.recall_weight,
                                                                    w_c = agent.rewards[c])
    R_I(j) = EM(recall answer j, probed entity)                    (one per recall sample)

Adding a reward is one function here (or passed in as `functions`) and one config line:

    @reward("answer_length")
    def answer_length(trajectory, episode, config):
        return len(trajectory.answer.content) / config.answer_tokens

    c.agent.rewards = {"answer_length": -0.1}     # a length penalty

A function sees the trajectory (its memories, replies, predictions and verifier scores), the episode
it read (the gold answer) and the agent config, and returns a float. It must not sample or decode
with the policy: columns are pure functions of the rollout's text and ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

RewardFn = Callable[[Any, Any, Any], float]  # (trajectory, episode, agent config) -> float

# The columns every task writes (not weighed by agent.rewards: their weights are 1 and lambda).
BUILTIN_COLUMNS = ("verifier", "recall")

REWARDS: dict[str, RewardFn] = {}


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Registers a reward column under `name` (the key of agent.rewards)."""

    def register(fn: RewardFn) -> RewardFn:
        if name in REWARDS or name in BUILTIN_COLUMNS:
            raise ValueError(f"A reward column named {name!r} exists already.")
        REWARDS[name] = fn
        return fn

    return register


@reward("answer_found")
def answer_found(trajectory: Any, episode: Any, config: Any) -> float:
    """1 when the answer extractor found a final answer (a format reward), else 0."""
    return float(trajectory.prediction is not None)


@reward("memory_fill")
def memory_fill(trajectory: Any, episode: Any, config: Any) -> float:
    """The mean length of the memories written, as a share of the budget (a negative weight is a length
    penalty; 0 for a trajectory that wrote none)."""
    written = trajectory.memories[1:]
    return float(np.mean([len(m) for m in written]) / config.memory_tokens) if written else 0.0


def check_weights(weights: Mapping[str, float], functions: Mapping[str, RewardFn] = REWARDS) -> None:
    """Raises ValueError naming the columns when `weights` names one that no function computes."""
    unknown = sorted(set(weights) - set(functions))
    if unknown:
        raise ValueError(
            f"agent.rewards names unknown reward columns {unknown}; registered: {sorted(functions)} "
            f"(the built-in {list(BUILTIN_COLUMNS)} are weighed by 1 and agent.recall_weight)."
        )


def reward_columns(
    trajectories: Sequence[Any],
    episodes: Sequence[Any],
    config: Any,
    weights: Mapping[str, float],
    functions: Mapping[str, RewardFn] = REWARDS,
) -> dict[str, np.ndarray]:
    """{column: [R] float64}: the built-in `verifier` and `recall`, then each weighed column, in order.

    trajectories[r].episode indexes `episodes`; trajectories carry `correct` (the verifier's score) and
    `recall_correct` (the recall EM of each G2 sample).
    """
    check_weights(weights, functions)
    columns = {
        "verifier": np.asarray([t.correct for t in trajectories], np.float64),
        # the recall mean in float32, as R_E has always been computed
        "recall": np.asarray(
            [np.asarray(t.recall_correct, np.float32).mean() if len(t.recall_correct) else 0.0 for t in trajectories],
            np.float64,
        ),
    }
    for name in weights:
        fn = functions[name]
        columns[name] = np.asarray([fn(t, episodes[t.episode], config) for t in trajectories], np.float64)
    return columns


def combine(columns: Mapping[str, np.ndarray], recall_weight: float, weights: Mapping[str, float]) -> np.ndarray:
    """R_E [R] = verifier + recall_weight * recall + sum_c weights[c] * columns[c], summed in float64 and
    returned as float32."""
    total = np.asarray(columns["verifier"], np.float64) + recall_weight * np.asarray(columns["recall"], np.float64)
    for name, weight in weights.items():
        total = total + weight * np.asarray(columns[name], np.float64)
    return total.astype(np.float32)
