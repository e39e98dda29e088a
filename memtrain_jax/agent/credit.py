"""Rewards and GRPO credit for a rollout: a flat batch of training sequences and the rollout's metrics.

Rewards (the paper's, as reward columns of memtrain_jax.rewards.columns):
  R_I = EM(recall answer)                                   one per recall sample
  R_E = EM(final answer) + lambda * mean_j R_I(j)          one per trajectory; the mean runs over the
        + sum_c w_c * column_c                              trajectory's G2 recall samples (0 without a probe);
                                                            columns weighed by agent.rewards (none in the paper)
Advantages (memtrain_jax.rl.group_advantages): E2E groups are the G1 trajectories of an episode,
each trajectory's G2 recall samples form their own group. Advantages are computed once per
trajectory (normalised at trajectory level) and then copied to every turn of it: all memory
updates (unless `train_memory_turns` is off) and, unless `train_final_answer` is off, the final
answer. Each recall sample is its own training sequence. With `dapo_filter`, groups whose rewards are
all equal are dropped (a recall group survives the drop of its E2E group).

Every sequence is its own conversation for the loss except with the "trajectory" aggregation, which
uses `conversations`: one id for all turns of a trajectory, its own id for each recall sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.rollout import Reply, RolloutBatch
from memtrain_jax.rewards.columns import REWARDS, RewardFn, combine, reward_columns
from memtrain_jax.rl.advantages import group_advantages, uniform_groups

KIND_IDS = {"memory": 0, "answer": 1, "recall": 2}


@dataclasses.dataclass
class TrainingSequences:
    """n training sequences, ragged on the host; the trainer pads them into length buckets.

    prompts[i]: [P_i] int32; responses[i]: [R_i] int32 (the stop token included when generated);
    logprobs[i]: [R_i] float32, the sampler's log-probs (the "old" policy); loss_masks[i]: [R_i] bool.
    Per sequence [n]: advantages, rewards, episode_ids, trajectories (index in the rollout), conversations,
    groups (E2E groups 0..E-1, recall groups after), turns (memory turn t, the answer turn = number of
    chunks, recall = the probe's step k), kinds (KIND_IDS).
    """

    prompts: list[np.ndarray]
    responses: list[np.ndarray]
    logprobs: list[np.ndarray]
    loss_masks: list[np.ndarray]
    advantages: np.ndarray
    rewards: np.ndarray
    episode_ids: np.ndarray
    trajectories: np.ndarray
    conversations: np.ndarray
    groups: np.ndarray
    turns: np.ndarray
    kinds: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_response_tokens(self) -> int:
        return int(sum(int(m.sum()) for m in self.loss_masks))

    def select(self, index: Sequence[int] | np.ndarray) -> TrainingSequences:
        """The sequences at `index`, in that order."""
        index = np.asarray(index, np.int64)
        pick = lambda xs: [xs[i] for i in index.tolist()]
        return TrainingSequences(
            pick(self.prompts),
            pick(self.responses),
            pick(self.logprobs),
            pick(self.loss_masks),
            *(getattr(self, f.name)[index] for f in dataclasses.fields(self)[4:]),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[TrainingSequences]) -> TrainingSequences:
        fields = dataclasses.fields(cls)
        lists = [sum((getattr(p, f.name) for p in parts), []) for f in fields[:4]]
        arrays = [np.concatenate([getattr(p, f.name) for p in parts]) for f in fields[4:]]
        return cls(*lists, *arrays)


def trajectory_rewards(
    batch: RolloutBatch, config: AgentConfig, functions: Mapping[str, RewardFn] = REWARDS
) -> tuple[np.ndarray, list[np.ndarray], dict[str, np.ndarray]]:
    """(R_E [R] per trajectory, R_I per trajectory as [G2] arrays (empty without a probe), the reward
    columns {name: [R]} that R_E weighs)."""
    weights = dict(config.rewards)
    columns = reward_columns(batch.trajectories, batch.episodes, config, weights, functions)
    recall = [np.asarray(t.recall_correct, np.float32) for t in batch.trajectories]
    return combine(columns, config.recall_weight, weights), recall, columns


def _sequence(reply: Reply) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    response = reply.response.astype(np.int32)
    return np.asarray(reply.prompt, np.int32), response, reply.logprobs.astype(np.float32), np.ones(len(response), bool)


def assign_credit(
    batch: RolloutBatch, config: AgentConfig, functions: Mapping[str, RewardFn] = REWARDS
) -> tuple[TrainingSequences, dict[str, Any]]:
    """Rewards, advantages and DAPO filtering of a rollout -> (training sequences, metrics of the rollout).

    `functions`: the reward columns agent.rewards may weigh (default: the registered ones)."""
    trajectories = batch.trajectories
    num_episodes = len(batch.episodes)
    r_e, r_i, columns = trajectory_rewards(batch, config, functions)
    episode_of = np.asarray([t.episode for t in trajectories], np.int32)
    adv_e = np.asarray(
        group_advantages(r_e, episode_of, num_episodes, config.advantage_normalisation, config.negative_weight)
    )
    uniform_e = np.asarray(uniform_groups(r_e, episode_of, num_episodes))
    drop_e = uniform_e & config.dapo_filter

    probed = [r for r, t in enumerate(trajectories) if t.probe is not None and len(t.recall)]
    recall_rewards = np.concatenate([r_i[r] for r in probed]) if probed else np.zeros((0,), np.float32)
    recall_group = (
        np.concatenate([np.full(len(r_i[r]), g, np.int32) for g, r in enumerate(probed)])
        if probed
        else (np.zeros((0,), np.int32))
    )
    adv_i = np.asarray(
        group_advantages(
            recall_rewards, recall_group, len(probed), config.advantage_normalisation, config.negative_weight
        )
    )
    uniform_i = np.asarray(uniform_groups(recall_rewards, recall_group, len(probed)))
    drop_i = uniform_i & config.dapo_filter

    rows: list[tuple] = []  # (reply, advantage, reward, trajectory, conversation, group, turn, kind)
    conversation = 0
    for r, traj in enumerate(trajectories):
        if not drop_e[traj.episode]:
            turns = (
                [(reply, t, "memory") for t, reply in enumerate(traj.memory_turns)] if config.train_memory_turns else []
            )
            if config.train_final_answer:
                turns.append((traj.answer, len(traj.memory_turns), "answer"))
            for reply, turn, kind in turns:
                rows.append((reply, adv_e[r], r_e[r], r, conversation, traj.episode, turn, kind))
        conversation += 1
    offset = 0
    for g, r in enumerate(probed):
        traj = trajectories[r]
        for j, reply in enumerate(traj.recall):
            if not drop_i[g]:
                rows.append(
                    (
                        reply,
                        adv_i[offset + j],
                        recall_rewards[offset + j],
                        r,
                        conversation,
                        num_episodes + g,
                        traj.probe.step,
                        "recall",
                    )
                )
            conversation += 1
        offset += len(traj.recall)

    parts = [_sequence(row[0]) for row in rows]
    column = lambda k, dtype: np.asarray([row[k] for row in rows], dtype)
    sequences = TrainingSequences(
        prompts=[p[0] for p in parts],
        responses=[p[1] for p in parts],
        logprobs=[p[2] for p in parts],
        loss_masks=[p[3] for p in parts],
        advantages=column(1, np.float32),
        rewards=column(2, np.float32),
        episode_ids=np.asarray([batch.episodes[trajectories[row[3]].episode].episode_id for row in rows], np.int64),
        trajectories=column(3, np.int32),
        conversations=column(4, np.int32),
        groups=column(5, np.int32),
        turns=column(6, np.int32),
        kinds=np.asarray([KIND_IDS[row[7]] for row in rows], np.int32),
    )
    metrics = rollout_metrics(batch, r_e, recall_rewards, drop_e, drop_i, sequences)
    # groups whose rewards are all equal (zero advantage), whether or not the DAPO filter drops them
    metrics.update(groups_e2e_uniform=int(uniform_e.sum()), groups_recall_uniform=int(uniform_i.sum()))
    metrics.update({f"column_{name}": float(np.mean(col)) if col.size else 0.0 for name, col in columns.items()})
    return sequences, metrics


def rollout_metrics(
    batch: RolloutBatch,
    r_e: np.ndarray,
    recall_rewards: np.ndarray,
    drop_e: np.ndarray,
    drop_i: np.ndarray,
    sequences: TrainingSequences,
) -> dict[str, Any]:
    """Accuracy, rewards, group drops, lengths and counters of one rollout (before the update)."""
    trajectories = batch.trajectories
    memory_lengths = [len(m) for t in trajectories for m in t.memories[1:]]
    recall_missing = [p is None for t in trajectories for p in t.recall_predictions]
    mean = lambda xs: float(np.mean(xs)) if len(xs) else 0.0
    kinds = sequences.kinds
    return {
        "episodes": len(batch.episodes),
        "episodes_skipped": batch.episodes_skipped,
        "trajectories": len(trajectories),
        "reward_e2e": mean(r_e),
        "acc_e2e": mean([t.correct for t in trajectories]),
        "reward_recall": mean(recall_rewards),
        "acc_recall": mean(recall_rewards),  # R_I is the recall exact match itself
        "recall_samples": int(recall_rewards.size),
        "probes_missing": sum(t.probe is None for t in trajectories),
        "missing_box_answer": mean([t.prediction is None for t in trajectories]),
        "missing_box_recall": mean(recall_missing),
        "memory_truncations": sum(t.truncations for t in trajectories),
        "memory_turns": sum(len(t.memory_turns) for t in trajectories),
        "memory_tokens_mean": mean(memory_lengths),
        "answer_tokens_mean": mean([len(t.answer.content) for t in trajectories]),
        "groups_e2e": int(drop_e.size),
        "groups_e2e_dropped": int(drop_e.sum()),
        "groups_recall": int(drop_i.size),
        "groups_recall_dropped": int(drop_i.sum()),
        "sequences": len(sequences),
        "sequences_memory": int((kinds == KIND_IDS["memory"]).sum()),
        "sequences_answer": int((kinds == KIND_IDS["answer"]).sum()),
        "sequences_recall": int((kinds == KIND_IDS["recall"]).sum()),
        "response_tokens": sequences.num_response_tokens,
        "advantage_mean": mean(sequences.advantages),
        "advantage_abs_mean": mean(np.abs(sequences.advantages)),
        "policy_calls": sum(batch.policy_calls.values()),
    }
