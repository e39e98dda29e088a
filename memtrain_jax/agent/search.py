"""Search-based QA (MEM1's setting): the agent alternates search queries and reading their results, keeping
what it learns in its bounded notes, and finally answers.

Turn t's prompt (the `search` template) holds the question, the agent's latest reply (its notes and
last action; "no previous memory" at t = 1) and the latest retrieved block only (`<information>`:
the top-k passages of the last query, cut to `information_tokens`; "No search yet." at t = 1), so
the context stays bounded however many turns the episode takes. A reply must end with exactly one
action, `<search>query</search>` or `<answer>text</answer>`, and hold no other action tag; a reply
that breaks this, or is cut at its budget, ends the episode as a failure ("malformed"), as does
reaching `max_turns` without an answer ("no answer"). Both are counted.

Multi-objective episodes (memtrain_jax.data.qa.join_questions) answer their sub-questions in order,
separated by `separator`; the score is exact match averaged over the sub-answers.

For training, a search episode is a `SearchTrajectory`: an `AgentTrajectory` whose turns before the last
(each reply is the agent's new notes, MEM1's internal state) are its `memory_turns` and whose last turn is
its `answer`, so GRPO credit (memtrain_jax.agent.credit) copies the trajectory's advantage to every turn.
The rollout returns text and ids (and the parsed <answer>); the task scores it
(memtrain_jax.rewards.scoring.score_search). Retrieved passages enter only prompts, never replies: they are
outside every loss mask by construction.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from memtrain_jax import stats
from memtrain_jax.agent.policy import Policy
from memtrain_jax.agent.prompts import PromptBuilder
from memtrain_jax.agent.rollout import AgentTrajectory, Episode, Reply, RolloutBatch, call_seed, replies_from_output
from memtrain_jax.config import section_values
from memtrain_jax.data.qa import QARecord, join_questions, objective_groups
from memtrain_jax.data.retrieval import Retriever
from memtrain_jax.rewards import objective_scores
from memtrain_jax.tokenizer.base import Tokenizer

_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>\s*$", re.DOTALL)
_TAG = re.compile(r"</?(search|answer)>")
NO_SEARCH = "No search yet."


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """max_turns: policy turns per episode; top_k: passages per search; turn_tokens: reply budget;
    information_tokens: the retrieved block's budget; separator: between sub-answers."""

    max_turns: int = 6
    top_k: int = 3
    turn_tokens: int = 256
    information_tokens: int = 512
    separator: str = ";"
    group_size: int = 1

    def __post_init__(self):
        for name in ("max_turns", "top_k", "turn_tokens", "information_tokens", "group_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"search.{name} must be a positive int, got {getattr(self, name)!r}.")
        if not self.separator:
            raise ValueError("search.separator must not be empty.")

    @classmethod
    def from_config(cls, section: Any, group_size: int = 1) -> SearchConfig:
        values = section_values(cls, section, "search", exclude=("group_size",))
        return cls(**values, group_size=group_size)


@dataclasses.dataclass
class SearchTrajectory(AgentTrajectory):
    """One search episode: `failure` says why it ended without an answer ("" when it answered)."""

    failure: str = ""


def parse_action(text: str) -> tuple[str, str]:
    """("search", query) | ("answer", text) | ("malformed", why) of one reply (strict, see module docstring)."""
    tags = _TAG.findall(text)
    match = _ACTION.search(text)
    if match is None:
        return "malformed", "the reply does not end with <search>...</search> or <answer>...</answer>"
    if len(tags) != 2:
        return "malformed", f"the reply holds {len(tags) // 2 or len(tags)} action tags; exactly one action is allowed"
    value = match.group(2).strip()
    if not value:
        return "malformed", f"empty <{match.group(1)}>"
    return match.group(1), value


def information_block(passages: Sequence[tuple[str, str]]) -> str:
    """The retrieved passages as the `<information>` text: "Doc i (title): text" lines."""
    return "\n".join(f"Doc {i} ({title}): {text}" for i, (title, text) in enumerate(passages, 1))


def search_rollout(
    policy: Policy,
    records: Sequence[QARecord],
    builder: PromptBuilder,
    tokenizer: Tokenizer,
    retriever: Retriever,
    corpus: Sequence[tuple[str, str]],
    config: SearchConfig,
    *,
    seed: int,
    step: int,
    episode_ids: Sequence[int] | None = None,
) -> RolloutBatch:
    """Runs `config.group_size` search episodes per record in lockstep (one policy call per turn, one retriever
    call per turn for every row that searched). Trajectories are record-major and unscored
    (memtrain_jax.rewards.score_search scores them)."""
    if not records:
        raise ValueError("search_rollout got no records.")
    g = config.group_size
    ids = list(episode_ids) if episode_ids is not None else list(range(len(records)))
    problems = [builder.encode_problem(r.question) for r in records]
    episodes = [Episode(int(e), r.answers, [], problem=p) for e, r, p in zip(ids, records, problems, strict=True)]
    rows = [
        SearchTrajectory(e, s, memory_turns=[], memories=[builder.no_memory_ids])
        for e in range(len(records))
        for s in range(g)
    ]
    information = [tuple(tokenizer.encode(NO_SEARCH))] * len(rows)
    replies: list[list[Reply]] = [[] for _ in rows]
    done = [False] * len(rows)
    calls = {"search": 0, "retrieval": 0}
    for t in range(config.max_turns):
        active = [r for r in range(len(rows)) if not done[r]]
        if not active:
            break
        prompts = [
            builder.search_prompt(problems[rows[r].episode], rows[r].memories[-1], information[r])
            if not done[r]
            else [tokenizer.pad_id]
            for r in range(len(rows))
        ]
        budgets = [0 if done[r] else config.turn_tokens for r in range(len(rows))]
        out = policy.generate(
            prompts,
            budgets,
            kind="search",
            seed=call_seed(seed, step, "search", t),
            row_ids=[ids[row.episode] * g + row.sample for row in rows],  # keyed by episode, not batch position
        )
        calls["search"] += 1
        queries: dict[int, str] = {}
        for r, reply in zip(active, replies_from_output(prompts, out, active), strict=True):
            traj = rows[r]
            replies[r].append(reply)
            traj.memories.append(tuple(int(i) for i in reply.content))
            text = tokenizer.decode(reply.content.tolist())
            kind, value = parse_action(text) if reply.stopped else ("malformed", "cut at the turn budget")
            traj.truncations += int(not reply.stopped)
            if kind == "answer":
                traj.answer_text, traj.prediction, done[r] = text, value, True
            elif kind == "malformed":
                traj.answer_text, traj.failure, done[r] = text, f"malformed: {value}", True
            elif t == config.max_turns - 1:
                traj.answer_text, traj.failure, done[r] = text, "no answer", True
            else:
                queries[r] = value
        if queries:
            found, _ = retriever.search(list(queries.values()), config.top_k)
            calls["retrieval"] += 1
            for r, hits in zip(queries, found, strict=True):
                block = tokenizer.encode(information_block([corpus[int(i)] for i in hits]))
                information[r] = tuple(block[: config.information_tokens])
    for r, traj in enumerate(rows):
        traj.memory_turns, traj.answer = replies[r][:-1], replies[r][-1]
    return RolloutBatch(episodes, rows, 0, calls, g, 0)


def _failures(trajectories: Sequence[AgentTrajectory]) -> dict[str, int]:
    """How many episodes ended malformed, and how many without an answer."""
    return {
        "malformed": sum(t.failure.startswith("malformed") for t in trajectories),
        "no_answer": sum(t.failure == "no answer" for t in trajectories),
    }


def _turns_mean(trajectories: Sequence[AgentTrajectory]) -> float:
    return float(np.mean([len(t.memory_turns) + 1 for t in trajectories])) if trajectories else 0.0


def search_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Score, failures and turns of a search rollout (the credit metrics add rewards and advantages)."""
    trajectories = batch.trajectories
    n = max(len(trajectories), 1)
    return {
        "score": float(np.mean([t.correct for t in trajectories])) if trajectories else 0.0,
        **{name: count / n for name, count in _failures(trajectories).items()},
        "turns_mean": _turns_mean(trajectories),
    }


def evaluate_search(
    policy: Policy,
    questions: Sequence[QARecord],
    objectives: Sequence[int],
    builder: PromptBuilder,
    tokenizer: Tokenizer,
    retriever: Retriever,
    corpus: Sequence[tuple[str, str]],
    config: SearchConfig,
    *,
    seed: int,
    batch_size: int,
    log: Callable[[str], None] | None = print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Search QA of `questions` joined k at a time (data.qa.objective_groups, fixed by `seed`) for each k of
    `objectives`, one episode a joined question: ({str(k): figures}, answers). The figures have the layout of
    agent.qa.score_table, so the long-text QA tables print them and pair two arms on them; answers: one dict
    per episode (objectives, question ids, the final reply, the parsed answer, golds, failure, turns).

    figures: `em`, the share of questions whose sub-answer matches (SQuAD-normalised), with its Wilson 95 %
    interval (`em_interval`; the sub-answers of one episode count as separate questions, though they share a
    search); `items` = {"id": the covered questions' ids in `questions`' order, "em": 0/1 each}; the shares of
    episodes that ended malformed or without an answer (`malformed`, `no_answer`, Wilson intervals alike);
    `turns_mean`; `questions`, `episodes`; `mean_tokens` (prompt and reply tokens an episode processes);
    `seconds`, `questions_per_s`, `tokens_per_s`."""
    single = dataclasses.replace(config, group_size=1)
    table: dict[str, Any] = {}
    answers: list[dict[str, Any]] = []
    for k in objectives:
        groups = objective_groups(len(questions), int(k), seed)
        if not groups:
            raise ValueError(f"{len(questions)} questions cannot make one episode of {k} objectives.")
        records = [join_questions([questions[i] for i in g]) if len(g) > 1 else questions[g[0]] for g in groups]
        start = time.perf_counter()
        trajectories: list[tuple[int, SearchTrajectory]] = []  # (the episode's index in `records`, its trajectory)
        for b in range(0, len(records), batch_size):
            rows = records[b : b + batch_size]
            result = search_rollout(
                policy, rows, builder, tokenizer, retriever, corpus, single, seed=seed, step=0,
                episode_ids=range(b, b + len(rows)),
            )  # fmt: skip
            trajectories.extend((b + t.episode, t) for t in result.trajectories)
        seconds = time.perf_counter() - start
        match: dict[int, float] = {}
        for e, t in trajectories:
            scores = objective_scores(t.prediction, records[e].golds, config.separator)
            match.update(zip(groups[e], scores, strict=True))
            answers.append({
                "objectives": int(k), "ids": [questions[i].id for i in groups[e]], "reply": t.answer_text,
                "prediction": t.prediction, "golds": [list(g) for g in records[e].golds], "em": scores,
                "failure": t.failure, "turns": len(t.memory_turns) + 1,
            })  # fmt: skip
        covered = sorted(match)
        em = [float(match[i]) for i in covered]
        trajectories = [t for _, t in trajectories]
        episodes = len(trajectories)
        processed = [sum(len(r.prompt) + len(r.response) for r in [*t.memory_turns, t.answer]) for t in trajectories]
        shares = _failures(trajectories)
        table[str(k)] = {
            "em": float(np.mean(em)),
            "em_interval": list(stats.wilson_interval(sum(em), len(em))),
            "items": {"id": [questions[i].id for i in covered], "em": em},
            **{name: count / episodes for name, count in shares.items()},
            **{f"{name}_interval": list(stats.wilson_interval(count, episodes)) for name, count in shares.items()},
            "turns_mean": _turns_mean(trajectories),
            "questions": len(em),
            "episodes": episodes,
            "mean_tokens": float(np.mean(processed)),
            "seconds": seconds,
            "questions_per_s": len(em) / seconds if seconds > 0 else float("nan"),
            "tokens_per_s": sum(processed) / seconds if seconds > 0 else float("nan"),
        }
        if log:
            row = table[str(k)]
            log(
                f"[eval-search] {episodes} episodes of {k} objective(s): em {row['em']:.3f} "
                f"[{row['em_interval'][0]:.3f}, {row['em_interval'][1]:.3f}] over {len(em)} questions, malformed "
                f"{row['malformed']:.2f}, no answer {row['no_answer']:.2f}, turns {row['turns_mean']:.2f} "
                f"({seconds:.0f}s)"
            )
    return table, answers
