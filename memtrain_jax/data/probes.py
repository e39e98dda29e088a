"""Intermediate memory recall (IMR) probes, data side: which chunk to probe and what to mask.

Step convention: the agent reads chunk t (0-based) at turn t, so the memory "at step k" is the
memory written after reading chunks 0..k-1 (k >= 1: never the initial empty memory; k = number
of chunks is the final memory). A probe takes that memory plus one chunk l with one of its valid
entities replaced by `[TARGET]` at every occurrence in that chunk; the model must name the entity.

Modes (`mode`):
- "paper" (default): l is drawn from 0..k-1, chunks already read at step k.
- "code": l is drawn from 1..k (the public code's variant: it can pick the unread chunk k and
  never chunk 0); indices past the last chunk are not candidates.
- "latest": l = k - 1, the chunk read at the turn that wrote the memory (a CPU curriculum: a memory that
  keeps what it just read answers it; "paper" also asks for what earlier turns had to carry forward).

Candidate chunks are tried in an rng-drawn order until one has a valid entity; `make_probe`
returns None when none has (no probe for that trajectory). With the memory texts given (`memories`, a CPU
curriculum, `data.probes.in_memory`), an entity is valid only where the memory at step k names it, so every
probe is answerable by reading the memory: its reward then measures the answerer, not what the memory kept.
Randomness comes from `probe_rng` (global seed, episode id, step), so a probe is reproducible from the episode alone.

`draw_probe` is the agent's entry point: one probe per trajectory (the `sample`-th of its episode's
group), at a step k drawn uniformly from 1..num_chunks (every memory but the initial one; steps
without a usable probe are tried in a drawn order), all from `trajectory_probe_rng(seed,
episode_id, sample)`, so a resumed run draws the same probes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from memtrain_jax.data.documents import maskable_entities
from memtrain_jax.data.entities import choose_entity, valid_entities
from memtrain_jax.data.masking import MASK_TOKEN, TARGET_TOKEN, count_occurrences, mask_entity
from memtrain_jax.data.types import Paragraph

PROBE_MODES = ("paper", "code", "latest")
# Stream tag of probe randomness in the episode seed sequence (documents use tag 1).
_PROBE_STREAM = 2


@dataclasses.dataclass(frozen=True)
class Probe:
    """One recall probe: chunk `chunk_index` masked, to be answered from the memory at `step`."""

    step: int  # k: the memory after reading chunks 0..k-1
    chunk_index: int  # l
    masked_chunk: str  # chunk l's text with every occurrence of `gold` replaced by the target token
    gold: str
    mask_count: int


def probe_rng(seed: int, episode_id: int, step: int) -> np.random.Generator:
    """The generator of the probe at `step` of episode `episode_id` under global `seed`."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), int(episode_id), int(step)], spawn_key=(_PROBE_STREAM,))
    )


def trajectory_probe_rng(seed: int, episode_id: int, sample: int) -> np.random.Generator:
    """The generator of the probe of trajectory `sample` (0..G1-1) of episode `episode_id`."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), int(episode_id), int(sample)], spawn_key=(_PROBE_STREAM, 1))
    )


def candidate_chunks(step_k: int, num_chunks: int, mode: str = "paper") -> list[int]:
    """Chunk indices a probe at step k may mask (see module docstring)."""
    if mode not in PROBE_MODES:
        raise ValueError(f"Unknown probe mode {mode!r}; choose one of {PROBE_MODES}.")
    if num_chunks < 1:
        raise ValueError(f"A probe needs at least one chunk, got num_chunks={num_chunks}.")
    if not 1 <= step_k <= num_chunks:
        raise ValueError(
            f"step_k={step_k} must be in [1, {num_chunks}]: step 0 holds the initial empty memory and a "
            f"document of {num_chunks} chunks has memories up to step {num_chunks}."
        )
    if mode == "paper":
        return list(range(step_k))
    if mode == "latest":
        return [step_k - 1]
    return [i for i in range(1, step_k + 1) if i < num_chunks]


def _chunk_entities(text: str, index: int, extractor: Any, entities: Sequence[str] | None, **rules: int) -> list[str]:
    if entities is not None:
        found = valid_entities(text, list(entities), **rules)
    else:
        found = extractor.extract([Paragraph(id=f"chunk-{index}", title="", text=text)])[0]
    # Never pick an entity that would collide with either mask token (the chunk may hold [MASK]).
    return maskable_entities(maskable_entities(found, TARGET_TOKEN), MASK_TOKEN)


def make_probe(
    chunks_text: Sequence[str],
    step_k: int,
    rng: np.random.Generator,
    *,
    extractor: Any = None,
    entities: Sequence[str] | None = None,
    mode: str = "paper",
    target_token: str = TARGET_TOKEN,
    max_occurrences: int = 5,
    max_words: int = 8,
    memory: str | None = None,
) -> Probe | None:
    """Draws the probe of step `step_k` over the document's chunk texts, or None if no candidate
    chunk has a valid entity.

    Entities come either from `extractor.extract([paragraph])` on the chunk text, or from the
    candidate strings `entities` (e.g. the document paragraphs' entities) kept when valid in the
    chunk (`valid_entities` with `max_occurrences`/`max_words`). Exactly one must be given.
    `memory`: the text of the memory at step k; when given, only entities it names are valid.
    """
    if (extractor is None) == (entities is None):
        raise ValueError("make_probe needs exactly one of extractor= or entities=.")
    candidates = candidate_chunks(step_k, len(chunks_text), mode)
    rules = {"max_occurrences": max_occurrences, "max_words": max_words}
    for position in rng.permutation(len(candidates)).tolist():
        index = candidates[position]
        text = chunks_text[index]
        found = maskable_entities(_chunk_entities(text, index, extractor, entities, **rules), target_token)
        if memory is not None:
            found = [e for e in found if count_occurrences(memory, e)]
        gold = choose_entity(found, rng) if found else None
        if gold is None:
            continue
        masked, count = mask_entity(text, gold, target_token)
        if count == 0:
            continue  # the extractor reported an entity the chunk does not hold verbatim
        return Probe(step=step_k, chunk_index=index, masked_chunk=masked, gold=gold, mask_count=count)
    return None


def draw_probe(
    chunks_text: Sequence[str],
    seed: int,
    episode_id: int,
    sample: int,
    *,
    extractor: Any,
    mode: str = "paper",
    target_token: str = TARGET_TOKEN,
    max_occurrences: int = 5,
    max_words: int = 8,
    memories: Sequence[str] | None = None,
) -> Probe | None:
    """The recall probe of one trajectory (module docstring), or None when no step has a usable probe.
    `memories`: the trajectory's memory texts by step (index 0 the initial memory), to probe only entities the
    probed memory names; None for the paper's probes."""
    rng = trajectory_probe_rng(seed, episode_id, sample)
    for step_k in (rng.permutation(len(chunks_text)) + 1).tolist():
        if not candidate_chunks(step_k, len(chunks_text), mode):
            continue
        probe = make_probe(
            chunks_text,
            step_k,
            rng,
            extractor=extractor,
            mode=mode,
            target_token=target_token,
            max_occurrences=max_occurrences,
            max_words=max_words,
            memory=None if memories is None else memories[step_k],
        )
        if probe is not None:
            return probe
    return None
