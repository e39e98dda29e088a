"""Reward columns (memtrain_jax/rewards/columns.py): a new reward is one function and one weight."""

from __future__ import annotations

import numpy as np
import pytest

from memtrain_jax.agent import AgentConfig, assign_credit
from memtrain_jax.agent.rollout import Episode, Reply, RolloutBatch, Trajectory
from memtrain_jax.config import load_config
from memtrain_jax.data.probes import Probe
from memtrain_jax.rewards.columns import REWARDS, combine, memory_fill, reward_columns


def _reply(n: int) -> Reply:
    return Reply(prompt=[1, 2], response=np.arange(n + 1, dtype=np.int32), logprobs=np.zeros(n + 1), stopped=True)


def _batch() -> RolloutBatch:
    """2 episodes x G1 = 2; final answers of 1, 3, 5, 7 tokens; verifier 1, 0, 0, 1; recall EM per trajectory."""
    episodes = [Episode(7, "Paris", [np.arange(4, dtype=np.int32)]), Episode(9, "Lima", [np.arange(4, dtype=np.int32)])]
    trajectories = []
    for r, (correct, recall) in enumerate([(1.0, [1.0, 0.0]), (0.0, [1.0, 1.0]), (0.0, [0.0, 0.0]), (1.0, [])]):
        trajectories.append(
            Trajectory(
                episode=r // 2,
                sample=r % 2,
                memory_turns=[_reply(4)],
                memories=[(0,), tuple(range(2 * r + 2))],  # memories of 2, 4, 6, 8 tokens
                answer=_reply(2 * r + 1),
                prediction="x",
                correct=correct,
                probe=Probe(1, 0, "[TARGET] met", "Paris", 1) if recall else None,
                recall=[_reply(1) for _ in recall],
                recall_predictions=["y" for _ in recall],
                recall_correct=recall,
            )
        )
    return RolloutBatch(episodes, trajectories, 0, {}, 2, 2)


def test_a_length_penalty_is_one_function_and_one_weight():
    # The whole extension: a function of the trajectory and its weight in the agent config.
    def answer_length(trajectory, episode, config):
        return len(trajectory.answer.content) / config.answer_tokens

    functions = {**REWARDS, "answer_length": answer_length}
    config = AgentConfig(answer_tokens=10, recall_weight=0.5, rewards=(("answer_length", -0.2),), dapo_filter=False)

    batch = _batch()
    sequences, metrics = assign_credit(batch, config, functions)
    # R_E written out: verifier + 0.5 * mean recall - 0.2 * answer tokens / 10 (answers of 1, 3, 5, 7 tokens).
    r_e = np.asarray([1 + 0.25 - 0.02, 0 + 0.5 - 0.06, 0 + 0 - 0.10, 1 + 0 - 0.14])
    answers = sequences.kinds == 1
    np.testing.assert_allclose(sequences.rewards[answers], r_e, rtol=1e-6)
    # Dr. GRPO advantages: R_E minus its episode's mean.
    expected = np.concatenate([r_e[:2] - r_e[:2].mean(), r_e[2:] - r_e[2:].mean()])
    np.testing.assert_allclose(sequences.advantages[answers], expected, rtol=1e-5, atol=1e-6)
    assert metrics["reward_e2e"] == pytest.approx(r_e.mean())
    assert metrics["column_answer_length"] == pytest.approx(np.mean([0.1, 0.3, 0.5, 0.7]))
    assert metrics["column_verifier"] == pytest.approx(0.5)
    assert metrics["column_recall"] == pytest.approx(np.mean([0.5, 1.0, 0.0, 0.0]))

    # Without the weight the paper's R_E comes back (verifier + 0.5 * mean recall).
    plain, _ = assign_credit(batch, AgentConfig(answer_tokens=10, recall_weight=0.5, dapo_filter=False), functions)
    np.testing.assert_allclose(plain.rewards[plain.kinds == 1], [1.25, 0.5, 0.0, 1.0])
    # Groups with equal rewards are counted whether or not DAPO drops them: recall groups [1, 1] and [0, 0].
    _, counts = assign_credit(batch, AgentConfig(recall_weight=0.0, dapo_filter=False))
    assert (counts["groups_recall_uniform"], counts["groups_recall_dropped"], counts["groups_e2e_uniform"]) == (2, 0, 0)


def test_registered_memory_fill_column():
    batch = _batch()
    config = AgentConfig(memory_tokens=8)
    assert [memory_fill(t, None, config) for t in batch.trajectories] == [0.25, 0.5, 0.75, 1.0]
    columns = reward_columns(batch.trajectories, batch.episodes, config, {"memory_fill": -1.0})
    assert list(columns) == ["verifier", "recall", "memory_fill"]
    np.testing.assert_allclose(
        combine(columns, 0.5, {"memory_fill": -1.0}), [1.25 - 0.25, 0.5 - 0.5, -0.75, 1.0 - 1.0], rtol=1e-6
    )


def test_unknown_reward_column_is_refused_with_its_name():
    batch = _batch()
    with pytest.raises(ValueError, match="'lenght_penalty'.*memory_fill"):
        reward_columns(batch.trajectories, batch.episodes, AgentConfig(), {"lenght_penalty": -1.0})
    config = load_config("memtrain.py:tiny")
    config.agent.rewards = {"memory_fill": -0.1}
    assert AgentConfig.from_config(config).rewards == (("memory_fill", -0.1),)
    # from the command line: the config's reward ablation (several allowed)
    named = load_config("memtrain.py:tiny,reward=memory_fill:-0.1,reward=answer_found:0.5")
    assert dict(AgentConfig.from_config(named).rewards) == {"memory_fill": -0.1, "answer_found": 0.5}
    config.agent.rewards = {"lenght_penalty": -1.0}
    with pytest.raises(ValueError, match="lenght_penalty"):
        AgentConfig.from_config(config)
