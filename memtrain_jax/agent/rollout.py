"""The memory agent's rollout: batched multi-turn memory updates, the final answer and recall probes.

For a batch of episodes, each repeated G1 times, every trajectory reads its document chunk by
chunk. At turn t one user message holds the instruction, the problem, the memory written at turn
t-1 and chunk t; the reply (its stop token removed, at most `memory_tokens` tokens, a longer one
cut and counted) is the new memory. All rows advance in lockstep, one policy call per turn for the
whole batch; rows whose document has fewer chunks ride along with a budget of 0. A final call asks
the problem from the final memory alone, answer in `\\boxed{}`. Then one call samples every recall
probe G2 times: for each trajectory, the memory it had at a drawn step k and an already-read chunk
with one entity masked as `[TARGET]` (memtrain_jax.data.probes.draw_probe; with `probe_shared` the
G1 trajectories of an episode share the probe of trajectory 0).

Everything stays in token ids; text is decoded only for the replies that are answered (final and
recall) and to find probe entities. A rollout returns text and ids only: the task scores it
(memtrain_jax.rewards.scoring.score_memory_agent).

Shapes: E episodes (usable ones), R = E * G1 trajectories, P = R * G2 recall rows at most.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.policy import Policy
from memtrain_jax.agent.prompts import PromptBuilder
from memtrain_jax.data.probes import Probe, draw_probe
from memtrain_jax.tokenizer.base import Tokenizer, tokenizer_fingerprint

KINDS = ("memory", "answer", "recall")


@dataclasses.dataclass
class Reply:
    """One generated reply and the prompt it answered. response: ids with the stop token if one ended it."""

    prompt: list[int]
    response: np.ndarray  # [n] int32
    logprobs: np.ndarray  # [n] float32, the policy's own log-probs of `response`
    stopped: bool

    @property
    def content(self) -> np.ndarray:
        """The reply without its stop token: what becomes the memory / what is scored."""
        return self.response[:-1] if self.stopped else self.response


@dataclasses.dataclass
class AgentTrajectory:
    """What GRPO trains from one of the G1 rollouts of an episode: the turns that rewrite the agent's bounded
    state (`memory_turns`: memory updates; for the search agent, its turns, whose reply is its notes) and the
    final `answer`, all sharing the trajectory's advantage. `prediction` and `correct` (the verifier) are
    filled by the task's scoring (memtrain_jax.rewards.scoring), not by the rollout."""

    episode: int  # index among the batch's usable episodes
    sample: int  # 0..G1-1
    memory_turns: list[Reply]
    memories: list[tuple[int, ...]]  # memories[k]: the state after k turns; [0] is the "no memory" text
    answer: Reply | None = None
    answer_text: str = ""
    prediction: str | None = None  # scored: the extracted answer (None: none found)
    correct: float = 0.0  # scored: the verifier
    truncations: int = 0  # replies cut at their budget

    # Recall probes are the memory agent's (Trajectory's fields); any other agent's trajectory has none. Class
    # attributes, not fields: readers of a rollout (credit, metrics, evaluation) need no branch on the agent.
    probe: ClassVar[None] = None
    probe_skipped: ClassVar[str] = ""
    recall: ClassVar[tuple] = ()
    recall_texts: ClassVar[tuple] = ()
    recall_predictions: ClassVar[tuple] = ()
    recall_correct: ClassVar[tuple] = ()


@dataclasses.dataclass
class Trajectory(AgentTrajectory):
    """The memory agent's trajectory: its memories, the final answer and its recall probe's G2 samples."""

    probe: Probe | None = None
    probe_skipped: str = ""  # why there is no probe ("" when there is one)
    recall: list[Reply] = dataclasses.field(default_factory=list)
    recall_texts: list[str] = dataclasses.field(default_factory=list)
    recall_predictions: list[str | None] = dataclasses.field(default_factory=list)  # scored
    recall_correct: list[float] = dataclasses.field(default_factory=list)  # scored: R_I per sample


@dataclasses.dataclass
class Episode:
    """A usable episode as the agent reads it."""

    episode_id: int
    answer: str | tuple[str, ...]  # the gold answer(s): any one counts
    chunks: list[np.ndarray]  # chunk ids, each [<= chunk_size] int32
    chunk_texts: list[str] | None = None  # decoded on demand (probes, logs)
    problem: tuple[int, ...] | None = None  # this episode's question (downstream QA); None = the config's


@dataclasses.dataclass
class RolloutBatch:
    """What one rollout produced: the episodes, their trajectories (episode-major) and counters."""

    episodes: list[Episode]
    trajectories: list[AgentTrajectory]  # Trajectory (memory agent) or agent.search.SearchTrajectory
    episodes_skipped: int
    policy_calls: dict[str, int]
    group_size: int
    recall_group_size: int


def episodes_from_batch(batch: Mapping[str, np.ndarray], tokenizer: Tokenizer) -> tuple[list[Episode], int]:
    """The usable episodes of a pipeline batch ([batch, ...] arrays) and the number skipped.

    Refuses a batch whose chunks were cut by another tokenizer than the policy's, and a usable episode
    with no chunk (shorter than one chunk: nothing to read).
    """
    n = len(batch["episode_id"])
    if n == 0:
        raise ValueError("The episode batch is empty: the data pipeline gave no episodes (check data.pool).")
    expected = tokenizer_fingerprint(tokenizer)
    found = {str(t) for t in np.asarray(batch["tokenizer_id"]).reshape(-1)}
    if found != {expected}:
        raise ValueError(
            f"The episodes' chunks were tokenized by another tokenizer (id {sorted(found)}) than the policy's "
            f"{tokenizer!r} (id {expected!r}); build the pipeline with the policy's tokenizer "
            "(memtrain_jax.data.stream.make_dataset(config, prepared, policy_tokenizer))."
        )
    episodes, skipped = [], 0
    for i in range(n):
        if not bool(batch["usable"][i]):
            skipped += 1
            continue
        num_chunks = int(batch["num_chunks"][i])
        lengths = np.asarray(batch["chunk_lengths"][i])
        if num_chunks < 1 or (lengths[:num_chunks] < 1).any():
            raise ValueError(
                f"Episode {int(batch['episode_id'][i])} is shorter than one chunk (num_chunks={num_chunks}, "
                f"chunk lengths {lengths.tolist()}): there is nothing for the agent to read."
            )
        chunks = [np.asarray(batch["tokens"][i][c, : lengths[c]], np.int32) for c in range(num_chunks)]
        episodes.append(Episode(int(batch["episode_id"][i]), str(batch["answer"][i]), chunks))
    return episodes, skipped


def call_seed(seed: int, step: int, kind: str, turn: int = 0) -> int:
    """The sampler seed of the policy call of `kind` ("memory", "answer", ...) at `turn` of rollout step `step`
    (a training step; 0 or a fixed value in evaluations) under run seed `seed`. Named by kind and turn, not by a
    running count of calls: a batch of shorter documents (fewer memory turns) then gives its answers the same seed
    as a batch of longer ones."""
    entropy = [int(seed), int(step), zlib.crc32(kind.encode()), int(turn)]
    return int(np.random.SeedSequence(entropy, spawn_key=(7,)).generate_state(1)[0])


def replies_from_output(prompts: list[list[int]], out: Any, rows: Sequence[int]) -> list[Reply]:
    """The Reply of each row in `rows` of a policy call's output (its prompt from `prompts`)."""
    tokens, logprobs = np.asarray(out.tokens), np.asarray(out.logprobs)
    lengths, stopped = np.asarray(out.lengths), np.asarray(out.stopped)
    return [
        Reply(prompts[r], tokens[r, : lengths[r]].astype(np.int32), logprobs[r, : lengths[r]], bool(stopped[r]))
        for r in rows
    ]


def rollout(
    policy: Policy,
    episodes: Sequence[Episode],
    builder: PromptBuilder,
    tokenizer: Tokenizer,
    config: AgentConfig,
    *,
    seed: int,
    step: int,
    extractor: Any = None,
    window: int | None = None,
    episodes_skipped: int = 0,
) -> RolloutBatch:
    """Runs the memory loop, the final answers and the recall probes for `episodes` x G1 trajectories.

    `extractor` finds entities in probed chunks (required when `config.imr`); `window` (the model's
    max positions) drops a probe whose prompt would not fit, counted as "too long".
    """
    if not episodes:
        raise ValueError("rollout got no usable episodes.")
    if len({e.episode_id for e in episodes}) < len(episodes):
        ids = [e.episode_id for e in episodes]
        raise ValueError(f"rollout got repeated episode ids {ids}; its rows' samples are keyed by them.")
    g1 = config.group_size
    problem = builder.problem_ids
    trajectories = [
        Trajectory(e, g, memory_turns=[], memories=[builder.no_memory_ids])
        for e in range(len(episodes))
        for g in range(g1)
    ]
    calls = dict.fromkeys(KINDS, 0)
    # A trajectory's rows are keyed by its episode id and sample, so its samples depend on (seed, step, episode)
    # and not on which episodes share the batch (an evaluation's batch size changes no figure).
    row_id = lambda traj: int(episodes[traj.episode].episode_id) * g1 + traj.sample

    # --- memory updates: one call per turn, finished rows ride along with a budget of 0 ---------------
    # Greedy memory turns (sampling.greedy_memory) are a function of the episode: decoded once, by its first
    # trajectory, and shared by its G1 trajectories (which then differ in their answers and probes only).
    writers = [traj for traj in trajectories if not config.greedy_memory or traj.sample == 0]
    for t in range(max(len(ep.chunks) for ep in episodes)):
        prompts, budgets, active = [], [], []
        for w, traj in enumerate(writers):
            chunks = episodes[traj.episode].chunks
            if t < len(chunks):
                question = episodes[traj.episode].problem or problem
                prompts.append(builder.memory_prompt(question, traj.memories[-1], chunks[t]))
                budgets.append(config.memory_tokens)
                active.append(w)
            else:
                prompts.append([tokenizer.pad_id])
                budgets.append(0)
        seed_t = call_seed(seed, step, "memory", t)
        out = policy.generate(prompts, budgets, kind="memory", seed=seed_t, row_ids=[row_id(w) for w in writers])
        calls["memory"] += 1
        for w, reply in zip(active, replies_from_output(prompts, out, active), strict=True):
            first = writers[w]
            for traj in (
                trajectories[first.episode * g1 : (first.episode + 1) * g1] if config.greedy_memory else [first]
            ):
                traj.memory_turns.append(reply)
                traj.memories.append(tuple(int(i) for i in reply.content))
                traj.truncations += int(not reply.stopped)

    # --- final answers: the problem and the final memory only --------------------------------------
    prompts = [builder.final_prompt(episodes[t.episode].problem or problem, t.memories[-1]) for t in trajectories]
    out = policy.generate(
        prompts,
        [config.answer_tokens] * len(prompts),
        kind="answer",
        seed=call_seed(seed, step, "answer"),
        row_ids=[row_id(t) for t in trajectories],
    )
    calls["answer"] += 1
    for traj, reply in zip(trajectories, replies_from_output(prompts, out, range(len(prompts))), strict=True):
        traj.answer = reply
        traj.answer_text = tokenizer.decode(reply.content.tolist())

    # --- intermediate memory recall: every probe x G2 in one call ----------------------------------
    if config.imr:
        if extractor is None:
            raise ValueError("rollout with imr=True needs an entity extractor for the probed chunks.")
        prompts, owners, recall_ids = [], [], []
        for r, traj in enumerate(trajectories):
            episode = episodes[traj.episode]
            if episode.chunk_texts is None:
                episode.chunk_texts = [tokenizer.decode(c.tolist()) for c in episode.chunks]
            traj.probe = draw_probe(
                episode.chunk_texts,
                seed,
                episode.episode_id,
                0 if config.probe_shared else traj.sample,
                extractor=extractor,
                mode=config.probe_mode,
                target_token=config.target_token,
                max_occurrences=config.probe_max_occurrences,
                max_words=config.max_words,
                memories=[tokenizer.decode(list(m)) for m in traj.memories] if config.probe_in_memory else None,
            )
            if traj.probe is None:
                traj.probe_skipped = "no usable chunk"
                continue
            prompt = builder.recall_prompt(traj.memories[traj.probe.step], tokenizer.encode(traj.probe.masked_chunk))
            if window is not None and len(prompt) + config.recall_tokens > window:
                traj.probe, traj.probe_skipped = None, "too long"
                continue
            prompts += [prompt] * config.recall_group_size
            owners += [r] * config.recall_group_size
            recall_ids += [row_id(traj) * config.recall_group_size + j for j in range(config.recall_group_size)]
        if prompts:
            out = policy.generate(
                prompts,
                [config.recall_tokens] * len(prompts),
                kind="recall",
                seed=call_seed(seed, step, "recall"),
                row_ids=recall_ids,
            )
            calls["recall"] += 1
            for r, reply in zip(owners, replies_from_output(prompts, out, range(len(prompts))), strict=True):
                trajectories[r].recall.append(reply)
                trajectories[r].recall_texts.append(tokenizer.decode(reply.content.tolist()))
    return RolloutBatch(
        list(episodes), trajectories, episodes_skipped, calls, g1, config.recall_group_size if config.imr else 0
    )
