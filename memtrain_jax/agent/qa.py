"""Downstream long-text QA: the memory agent reads a long context and answers; the full-context baseline beside it.

Both readers answer the same questions (memtrain_jax.data.qa.build_context) and are scored the same way:
SQuAD-normalised exact match, substring exact match (either direction, the figure MemAgent reports) and
token F1 (memtrain_jax.rewards.qa_scores) of the answer extracted from the reply (`\\boxed{}` by default).

- memory agent: the context in the policy's tokens, split into `chunk_size` chunks, read by the same
  rollout as MemTrain (one trajectory, no recall probes), the question in `<problem>` of every turn.
- full context: the whole context in one prompt; beyond the model's window the middle is cut
  (first and last halves kept, as MemAgent's baselines do).

Per reader and length: `QAAnswer` rows, then `score_table` = {reader: {num_docs: {em, sub_em, f1,
questions, mean_tokens, seconds, questions_per_s, tokens_per_s}}}.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from memtrain_jax import stats
from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.policy import Policy
from memtrain_jax.agent.prompts import PromptBuilder
from memtrain_jax.agent.rollout import Episode, call_seed, replies_from_output, rollout
from memtrain_jax.data.chunking import centre_truncate, split_chunks
from memtrain_jax.data.qa import LongContext, QARecord, build_context
from memtrain_jax.rewards import extract_answer, qa_scores, score_memory_agent
from memtrain_jax.tokenizer.base import Tokenizer

READERS = ("memory_agent", "full_context")
METRICS = ("em", "sub_em", "f1")


@dataclasses.dataclass
class QAAnswer:
    """One reader's answer to one question at one length. tokens: the context's tokens (before any cut);
    processed: tokens the policy read and wrote for this question (all prompts + replies)."""

    id: str
    reader: str
    num_docs: int
    prediction: str | None
    reply: str
    scores: dict[str, float]
    tokens: int
    processed: int


def qa_episode(context: LongContext, episode_id: int, builder: PromptBuilder, chunk_size: int) -> Episode:
    """The memory agent's episode of a long context: every chunk of it (no truncation), its own question."""
    ids = builder.tokenizer.encode(context.text)
    return Episode(
        episode_id,
        context.record.answers,
        list(split_chunks(ids, chunk_size)),
        problem=builder.encode_problem(context.record.question),
    )


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def read_with_memory(
    policy: Policy,
    contexts: Sequence[LongContext],
    builder: PromptBuilder,
    tokenizer: Tokenizer,
    agent: AgentConfig,
    *,
    seed: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[QAAnswer]:
    """The memory agent's answers: one trajectory per question, `batch_size` questions per lockstep rollout.
    A question's samples are keyed by its index and `seed`, so `batch_size` changes no answer."""
    agent = dataclasses.replace(agent, group_size=1, imr=False)
    answers: list[QAAnswer] = []
    for rows in _batches(len(contexts), batch_size):
        episodes = [qa_episode(contexts[i], i, builder, agent.chunk_size) for i in rows]
        result = score_memory_agent(rollout(policy, episodes, builder, tokenizer, agent, seed=seed, step=0), agent)
        for traj in result.trajectories:
            context = contexts[rows[traj.episode]]
            replies = [*traj.memory_turns, traj.answer]
            answers.append(
                QAAnswer(
                    context.record.id,
                    "memory_agent",
                    context.num_docs,
                    traj.prediction,
                    traj.answer_text,
                    qa_scores(traj.prediction, context.record.answers),
                    sum(len(c) for c in episodes[traj.episode].chunks),
                    sum(len(r.prompt) + len(r.response) for r in replies),
                )
            )
        if progress:
            progress(len(rows))
    return answers


def read_full_context(
    policy: Policy,
    contexts: Sequence[LongContext],
    builder: PromptBuilder,
    tokenizer: Tokenizer,
    agent: AgentConfig,
    *,
    window: int,
    seed: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[QAAnswer]:
    """The full-context baseline: one prompt with the whole context, its middle cut to fit `window`."""
    answers: list[QAAnswer] = []
    for rows in _batches(len(contexts), batch_size):
        prompts, lengths = [], []
        for i in rows:
            problem = builder.encode_problem(contexts[i].record.question)
            budget = window - builder.overhead("full_context") - len(problem) - agent.answer_tokens
            if budget < 1:
                raise ValueError(
                    f"The full-context prompt of record {contexts[i].record.id!r} leaves no room for the context "
                    f"in a window of {window} (question {len(problem)} tokens, answer {agent.answer_tokens})."
                )
            ids = tokenizer.encode(contexts[i].text)
            lengths.append(len(ids))
            prompts.append(builder.full_context_prompt(problem, centre_truncate(ids, budget).tolist()))
        out = policy.generate(
            prompts,
            [agent.answer_tokens] * len(prompts),
            kind="full_context",
            seed=call_seed(seed, 0, "full_context"),
            row_ids=list(rows),  # keyed by question: batch_size changes no answer
        )
        replies = replies_from_output(prompts, out, range(len(prompts)))
        for j, (i, reply) in enumerate(zip(rows, replies, strict=True)):
            text = tokenizer.decode(reply.content.tolist())
            prediction = extract_answer(text, agent.answer_extractor, agent.boxed_last_chars)
            record = contexts[i].record
            answers.append(
                QAAnswer(
                    record.id,
                    "full_context",
                    contexts[i].num_docs,
                    prediction,
                    text,
                    qa_scores(prediction, record.answers),
                    lengths[j],
                    len(reply.prompt) + len(reply.response),
                )
            )
        if progress:
            progress(len(rows))
    return answers


def score_table(answers: Sequence[QAAnswer], seconds: dict[tuple[str, int], float]) -> dict[str, Any]:
    """{reader: {num_docs: figures}}: mean em / sub_em / f1 (in [0, 1]) with their 95 % intervals
    (`<metric>_interval`: Wilson for the 0/1 matches, bootstrap for f1), questions, mean context tokens, wall
    seconds and throughput (questions/s, processed tokens/s) of each reader at each length, and `items`: each
    question's id and scores in the questions' order, on which two arms are paired."""
    table: dict[str, Any] = {}
    for reader in READERS:
        for n in sorted({a.num_docs for a in answers if a.reader == reader}):
            rows = [a for a in answers if a.reader == reader and a.num_docs == n]
            s = seconds.get((reader, n), float("nan"))
            intervals = {
                f"{m}_interval": list(stats.mean_with_interval([a.scores[m] for a in rows], binary=m != "f1")[1:3])
                for m in METRICS
            }
            table.setdefault(reader, {})[str(n)] = {
                **{m: float(np.mean([a.scores[m] for a in rows])) for m in METRICS},
                **intervals,
                "items": {"id": [a.id for a in rows], **{m: [float(a.scores[m]) for a in rows] for m in METRICS}},
                "questions": len(rows),
                "mean_tokens": float(np.mean([a.tokens for a in rows])),
                "seconds": s,
                "questions_per_s": len(rows) / s if s > 0 else float("nan"),
                "tokens_per_s": sum(a.processed for a in rows) / s if s > 0 else float("nan"),
            }
    return table


def evaluate_long_qa(
    policy: Policy,
    records: Sequence[QARecord],
    distractors: Sequence[tuple[str, str]],
    num_docs: Sequence[int],
    builder: PromptBuilder,
    tokenizer: Tokenizer,
    agent: AgentConfig,
    *,
    seed: int,
    batch_size: int,
    readers: Sequence[str] = ("memory_agent",),
    window: int | None = None,
    header: str = "Document {i}:",
    log: Callable[[str], None] | None = print,
) -> tuple[dict[str, Any], list[QAAnswer]]:
    """Every reader on every question at every length: (score_table, answers). All contexts are built (and
    checked) before any reader runs, so a length the pool cannot reach fails before compute."""
    unknown = [r for r in readers if r not in READERS]
    if unknown:
        raise ValueError(f"Unknown QA reader(s) {unknown}; choose from {READERS}.")
    if "full_context" in readers and window is None:
        raise ValueError("The full-context reader needs the model's window.")
    contexts = {n: [build_context(r, distractors, seed, num_docs=n, header=header) for r in records] for n in num_docs}
    answers: list[QAAnswer] = []
    seconds: dict[tuple[str, int], float] = {}
    from tqdm import tqdm

    total = len(records) * len(num_docs) * len(readers)
    bar = tqdm(total=total, unit="question", desc="eval-qa", disable=log is None, dynamic_ncols=True, leave=False)
    for n in num_docs:
        for reader in readers:
            start = time.perf_counter()
            if reader == "memory_agent":
                found = read_with_memory(
                    policy,
                    contexts[n],
                    builder,
                    tokenizer,
                    agent,
                    seed=seed,
                    batch_size=batch_size,
                    progress=bar.update,
                )
            else:
                found = read_full_context(
                    policy,
                    contexts[n],
                    builder,
                    tokenizer,
                    agent,
                    window=window,
                    seed=seed,
                    batch_size=batch_size,
                    progress=bar.update,
                )
            seconds[(reader, n)] = time.perf_counter() - start
            answers.extend(found)
            if log:
                row = score_table(found, seconds)[reader][str(n)]
                log(
                    f"[eval-qa] {reader} at {n} documents ({row['mean_tokens']:.0f} tokens): em {row['em']:.3f} "
                    f"sub_em {row['sub_em']:.3f} f1 {row['f1']:.3f}, {row['questions']} questions in "
                    f"{row['seconds']:.1f}s ({row['tokens_per_s']:.0f} tokens/s)"
                )
    bar.close()
    return score_table(answers, seconds), answers


def _cell(value: float | None, lo: float = float("nan"), hi: float = float("nan")) -> str:
    if value is None:
        return f"{'-':>20s}"
    if np.isnan(lo):
        return f"{100 * value:>20.1f}"
    return f"{f'{100 * value:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]':>20s}"


def _average(table: dict[str, Any], lengths: Sequence[int], metric: str) -> tuple[float, float, float] | None:
    """The mean over lengths and its bootstrap interval over questions (each question's mean over the lengths);
    without per-question items (an old results file) the plain mean."""
    cells = [table[str(n)] for n in lengths if str(n) in table]
    if not cells:
        return None
    if all("items" in c for c in cells) and len({tuple(c["items"]["id"]) for c in cells}) == 1:
        per_question = np.mean([c["items"][metric] for c in cells], axis=0)
        mean, lo, hi, _ = stats.mean_with_interval(per_question.tolist(), binary=False)
        return mean, lo, hi
    return float(np.mean([c[metric] for c in cells])), float("nan"), float("nan")


def format_table(tables: dict[str, dict[str, Any]], metric: str = "sub_em", unit: str = "documents") -> str:
    """Rows: arm (or reader); columns: lengths (in `unit`: documents, or search QA's objectives) and their
    average; cells: `metric` x 100 with its 95 % interval (Table 1's layout; n questions per cell in the last line).

    tables: {row name: {length: figures}}."""
    lengths = sorted({int(n) for table in tables.values() for n in table})
    header = f"{metric + ' x 100 [95% CI]':28s}" + "".join(f"{n:>20d}" for n in lengths) + f"{'avg':>20s}"
    lines = [
        header,
        f"{f'({unit}; mean tokens)':28s}" + "".join(f"{_mean_tokens(tables, n):>20.0f}" for n in lengths),
    ]
    for name, table in tables.items():
        cells = ""
        for n in lengths:
            cell = table.get(str(n))
            if cell is None:
                cells += _cell(None)
            else:
                lo, hi = cell.get(f"{metric}_interval", (float("nan"), float("nan")))
                cells += _cell(cell[metric], lo, hi)
        average = _average(table, lengths, metric)
        lines.append(f"{name:28s}{cells}{_cell(*average) if average else _cell(None)}")
    counts = sorted({c["questions"] for t in tables.values() for c in t.values()})
    lines.append(f"n = {', '.join(map(str, counts))} questions per cell")
    return "\n".join(lines)


def format_paired(tables: dict[str, dict[str, Any]], metric: str = "sub_em") -> str:
    """Each row after the first minus the first (the reference: the base model, or the memory agent), paired on
    the same questions at each length and on each question's mean over the lengths: mean x 100 [paired-bootstrap
    95 % interval]. Cells whose rows lack per-question items, or hold other questions, are "-"."""
    (reference, base), *others = tables.items()
    lengths = sorted({int(n) for table in tables.values() for n in table})
    header = f"{metric + ' x 100: row - ' + reference:28s}" + "".join(f"{n:>20d}" for n in lengths) + f"{'avg':>20s}"
    lines = [header]
    for name, table in others:
        cells, per_a, per_b = "", [], []
        for n in lengths:
            a, b = base.get(str(n), {}).get("items"), table.get(str(n), {}).get("items")
            if a is None or b is None or a["id"] != b["id"]:
                cells += _cell(None)
                continue
            per_a.append(a[metric])
            per_b.append(b[metric])
            cells += _cell(*stats.paired_difference(a[metric], b[metric]))
        average = (
            stats.paired_difference(np.mean(per_a, axis=0), np.mean(per_b, axis=0))
            if per_a and len(per_a) == len(lengths)
            else None
        )
        lines.append(f"{name:28s}{cells}{_cell(*average) if average else _cell(None)}")
    return "\n".join(lines)


def format_times(tables: dict[str, dict[str, Any]]) -> str:
    """Wall seconds and processed tokens/s of each row at each length (rows as `format_table`)."""
    lengths = sorted({int(n) for table in tables.values() for n in table})
    lines = [f"{'seconds | tokens/s':28s}" + "".join(f"{n:>16d}" for n in lengths)]
    for name, table in tables.items():
        cells = "".join(
            f"{table[str(n)]['seconds']:>7.1f} | {table[str(n)]['tokens_per_s']:>6.0f}"
            if str(n) in table
            else f"{'-':>16s}"
            for n in lengths
        )
        lines.append(f"{name:28s}{cells}")
    return "\n".join(lines)


def _mean_tokens(tables: dict[str, dict[str, Any]], n: int) -> float:
    values = [t[str(n)]["mean_tokens"] for t in tables.values() if str(n) in t]
    return float(np.mean(values)) if values else float("nan")
