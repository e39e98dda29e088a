"""The answer-format warm-up: supervised examples built from the same self-supervised episodes.

A small instruct model (SmolLM2-135M) asked for `\\boxed{}` answers answers in prose, so under the
paper's strict verifier every reward is zero and GRPO has nothing to learn from. The warm-up teaches
the answer format, and the reading it relies on, from data whose answers are known without labels:

- final answer: the final-answer prompt whose memory holds the document's sentences around the
  first `[MASK]` (what a good memory would have kept), preceded by the first sentence that names the entity
  when the document names it elsewhere (`document.mask_scope="pivot"`), target `\\boxed{<masked entity>}`;
- recall: the recall prompt whose memory is a chunk's own text around an entity (a perfect memory)
  and whose section is that chunk with the entity masked as `[TARGET]`, target `\\boxed{<entity>}`;
- memory update (with `memory_examples`): the memory prompt of each turn, its memory the previous
  turn's target, target a plain note-taker's memory cut to the memory budget (`memory_target`):
  "masked_first" (the default): the sentences holding `[MASK]` so far, then the section's first sentences;
  "latest_first": the section's sentences, then the earlier sentences holding `[MASK]` (a memory that
  always carries the chunk just read, so a recall probe of that chunk is answerable from it; once the
  `[MASK]` sentences fill the budget, "masked_first" adds nothing new). It only teaches the model to write
  notes from the text instead of chatting; GRPO then shapes what the notes keep.

For search QA (`search_format_examples`): MEM1's action format, each turn of the episode a well-behaved
agent would play (notes, then `<search>` the next question, finally `<answer>` every objective), so the base
loop writes well-formed actions and task RL sees non-zero rewards.

Targets end with the chat format's end-of-turn token, as a sampled reply does. The examples go
through the same packing and train step as GRPO, with the cross-entropy objective.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import KIND_IDS, TrainingSequences
from memtrain_jax.agent.prompts import PromptBuilder
from memtrain_jax.agent.rollout import Episode
from memtrain_jax.agent.search import NO_SEARCH, SearchConfig, information_block
from memtrain_jax.data.entities import choose_entity
from memtrain_jax.data.masking import count_occurrences, mask_entity
from memtrain_jax.data.qa import QARecord
from memtrain_jax.data.retrieval import Retriever
from memtrain_jax.data.types import Paragraph
from memtrain_jax.tokenizer.base import Tokenizer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MEMORY_TARGETS = ("masked_first", "latest_first")
_SUB_QUESTION = re.compile(r"Question \d+: (.*?)(?= Question \d+: |$)", re.DOTALL)


def _window(text: str, needle: str, tokenizer: Tokenizer, budget: int) -> list[int] | None:
    """Ids of the sentences of `text` containing `needle` (and the next ones while they fit), at most `budget`."""
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    first = next((i for i, s in enumerate(sentences) if needle in s), None)
    if first is None:
        return None
    ids = tokenizer.encode(" ".join(sentences[first:]))
    return ids[:budget]


def format_examples(
    episodes: Sequence[Episode],
    builder: PromptBuilder,
    tokenizer: Tokenizer,
    config: AgentConfig,
    stop_id: int,
    extractor: Any,
    rng: np.random.Generator,
    memory_examples: bool = True,
    max_target: int | None = None,
    memory_target: str = "masked_first",
    recall_entities: int = 1,
) -> TrainingSequences:
    """One final-answer example per episode with a `[MASK]`, up to `recall_entities` recall examples per chunk
    (distinct entities, drawn in turn without replacement), and (with `memory_examples`) one memory-update
    example per chunk. Examples whose target is longer than `max_target` tokens (a long entity name beyond the
    reply budget) are left out. `memory_target` orders the memory-update targets (MEMORY_TARGETS, see the
    module docstring)."""
    if memory_target not in MEMORY_TARGETS:
        raise ValueError(f"Unknown train.format_memory {memory_target!r}; choose one of {MEMORY_TARGETS}.")
    if recall_entities < 1:
        raise ValueError(f"train.format_recall_entities must be >= 1, got {recall_entities}.")
    rows: list[tuple[list[int], list[int], int]] = []  # (prompt, target, kind)
    for episode in episodes:
        if episode.chunk_texts is None:
            episode.chunk_texts = [tokenizer.decode(c.tolist()) for c in episode.chunks]
        if memory_examples:
            memory: list[int] = list(builder.no_memory_ids)
            kept: list[str] = []  # sentences with the mask token, read so far
            for ids, text in zip(episode.chunks, episode.chunk_texts, strict=True):
                sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
                if memory_target == "latest_first":
                    order = sentences + [s for s in kept if s not in sentences]
                    kept += [s for s in sentences if config.mask_token in s]
                else:
                    kept += [s for s in sentences if config.mask_token in s]
                    order = kept + [s for s in sentences if s not in kept]
                notes = tokenizer.encode(" ".join(order))
                notes = notes[: config.memory_tokens - 1]  # room for the end-of-turn token
                prompt = builder.memory_prompt(builder.problem_ids, memory, ids)
                rows.append((prompt, notes + [stop_id], KIND_IDS["memory"]))
                memory = notes
        target = tokenizer.encode(f"\\boxed{{{episode.answer}}}") + [stop_id]
        masked = next((t for t in episode.chunk_texts if config.mask_token in t), None)
        memory = _window(masked, config.mask_token, tokenizer, config.memory_tokens) if masked else None
        sentences = [s for t in episode.chunk_texts for s in _SENTENCE_END.split(t)]
        naming = [s for s in sentences if count_occurrences(s, episode.answer)]
        if memory and naming:  # the document names the entity elsewhere (document.mask_scope="pivot"): keep that too
            named = tokenizer.decode(tokenizer.encode(naming[0])[: config.memory_tokens // 2])
            memory = tokenizer.encode(f"{named} {tokenizer.decode(memory)}")[: config.memory_tokens]
        if memory:
            rows.append((builder.final_prompt(builder.problem_ids, memory), target, KIND_IDS["answer"]))
        if extractor is None:
            continue
        for text in episode.chunk_texts:
            (found,) = extractor.extract([Paragraph(id="chunk", title="", text=text)])
            found = [e for e in found if count_occurrences(text, e) and config.target_token not in e]
            for _ in range(recall_entities):
                entity = choose_entity(found, rng)
                if entity is None:
                    break
                found = [e for e in found if e != entity]
                memory = _window(text, entity, tokenizer, config.memory_tokens)
                chunk, _ = mask_entity(text, entity, config.target_token)
                if memory:
                    prompt = builder.recall_prompt(memory, tokenizer.encode(chunk))
                    target = tokenizer.encode(f"\\boxed{{{entity}}}") + [stop_id]
                    rows.append((prompt, target, KIND_IDS["recall"]))
    return _sequences(rows, max_target)


def sub_questions(question: str) -> list[str]:
    """The questions of a multi-objective question ("... Question 1: q1 Question 2: q2", as
    memtrain_jax.data.qa.join_questions writes it), or [question] for a plain one."""
    parts = _SUB_QUESTION.findall(question)
    return [q.strip() for q in parts] if parts else [question]


def search_format_examples(
    records: Sequence[QARecord],
    builder: PromptBuilder,
    tokenizer: Tokenizer,
    config: SearchConfig,
    retriever: Retriever,
    corpus: Sequence[tuple[str, str]],
    stop_id: int,
    max_target: int | None = None,
    query_words: int = 16,
) -> TrainingSequences:
    """MEM1's action format, from records whose answers are known: for a question of K objectives, the
    episode a well-behaved agent would play, one example per turn (the prompt as `search_rollout` builds it):

      turn k <= K   notes "Answer i: a_i." for i < k, then <search>q_k</search>   (q_k: the k-th question's
                    first `query_words` words); its information block: the retriever's top_k for q_{k-1}
      turn K + 1    notes for every objective, then <answer>a_1; ...; a_K</answer>

    Each turn's memory is the previous turn's target, as in the rollout. Examples whose target exceeds
    `max_target` tokens (the turn budget) are left out."""
    rows: list[tuple[list[int], list[int], int]] = []
    for record in records:
        questions = sub_questions(record.question)
        answers = [golds[0] for golds in record.golds]
        if len(questions) != len(answers):
            continue  # a question whose parts cannot be told apart: no example rather than a wrong one
        problem = builder.encode_problem(record.question)
        queries = [" ".join(q.split()[:query_words]) for q in questions]
        found, _ = retriever.search(queries, config.top_k)
        memory, information = list(builder.no_memory_ids), tokenizer.encode(NO_SEARCH)
        for k in range(len(answers) + 1):
            notes = " ".join(f"Answer {i + 1}: {a}." for i, a in enumerate(answers[:k])) or "Nothing found yet."
            if k < len(answers):
                reply = f"{notes}\n<search>{queries[k]}</search>"
            else:
                reply = f"{notes}\n<answer>{f'{config.separator} '.join(answers)}</answer>"
            target = tokenizer.encode(reply)
            prompt = builder.search_prompt(problem, memory, information)
            rows.append((prompt, target + [stop_id], KIND_IDS["answer" if k == len(answers) else "memory"]))
            if k < len(answers):
                block = information_block([corpus[int(i)] for i in found[k]])
                memory, information = target, tokenizer.encode(block)[: config.information_tokens]
    return _sequences(rows, max_target)


def _sequences(rows: list[tuple[list[int], list[int], int]], max_target: int | None) -> TrainingSequences:
    """Supervised (prompt, target, kind) rows as training sequences: every target token in the loss, advantage 1
    (the cross-entropy objective reads neither log-probs nor rewards)."""
    if max_target is not None:
        rows = [row for row in rows if len(row[1]) <= max_target]
    n = len(rows)
    responses = [np.asarray(t, np.int32) for _, t, _ in rows]
    return TrainingSequences(
        prompts=[np.asarray(p, np.int32) for p, _, _ in rows],
        responses=responses,
        logprobs=[np.zeros(len(r), np.float32) for r in responses],
        loss_masks=[np.ones(len(r), bool) for r in responses],
        advantages=np.ones(n, np.float32),
        rewards=np.zeros(n, np.float32),
        episode_ids=np.zeros(n, np.int64),
        trajectories=np.arange(n, dtype=np.int32),
        conversations=np.arange(n, dtype=np.int32),
        groups=np.zeros(n, np.int32),
        turns=np.zeros(n, np.int32),
        kinds=np.asarray([k for _, _, k in rows], np.int32),
    )
