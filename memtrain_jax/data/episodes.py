"""One training episode: the episode spec (EPISODE_FIELDS) and how one pivot slot becomes one episode.

An episode is a dict of numpy arrays (EPISODE_FIELDS; the stream batches them `[batch, ...]`):
    tokens         [max_chunks, chunk_size] int32  document chunks, pad_id-padded
    chunk_lengths  [max_chunks] int32              tokens in each chunk (0 = no chunk)
    num_chunks     [] int32
    num_tokens     [] int32   document tokens before centre truncation
    answer         [] str     the gold entity (the reward compares text)
    answer_ids     [max_answer_tokens] int32       encode(answer), pad_id-padded, cut at max
    answer_length  [] int32   min(len(encode(answer)), max_answer_tokens)
    mask_count     [] int32   "[MASK]" occurrences in the document
    masks_kept     [] int32   "[MASK]" occurrences in what the agent reads (after centre truncation)
    tokenizer_id   [] str     tokenizer_fingerprint of the tokenizer the chunks are in
    usable         [] bool    False: skipped, never trained on (see below); then num_chunks = 0
    pivot_index    [] int32   pool index of the pivot
    episode_id     [] int64   epoch * num_pivots + pivot slot: unique over hosts and epochs
    epoch          [] int32
    seed           [] int64   the global data seed (probes: probe_rng(seed, episode_id, step))

Never trained on: a document whose centre truncation dropped every mask (nothing left to
reconstruct), and, with `document.skip_leaking_entities`, a pivot whose every entity leaks. Such
an episode stays in the stream with `usable` False (and no chunks), so every host keeps the same
number of steps and the same pivot coverage; the agent leaves it out of its rollouts and counts
it. `document_statistics` counts both (and the leaks the default keeps) for `prepare`/`preview`.
A pre-built slot whose document is skipped is stored as SKIPPED_RECORD.

Determinism: the document of an episode is drawn from `document_rng(seed, episode_id)`, so it
does not depend on the host count, worker count or position in the stream (`stream.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memtrain_jax.data.chunking import chunk_document, pad_chunks
from memtrain_jax.data.documents import (
    Document,
    DocumentConfig,
    NoValidEntityError,
    build_document,
    document_rng,
    entity_leaks,
)
from memtrain_jax.data.prepare import PreparedData, data_section
from memtrain_jax.tokenizer.base import Tokenizer, tokenizer_fingerprint

SKIPPED_RECORD = b"null"  # a pre-built slot whose document is skipped


class TokenCounter:
    """`len(tokenizer.encode(text))`, memoised per text (pool paragraphs recur across documents;
    the memo is bounded by the pool size); picklable for worker processes."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._counts: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = len(self.tokenizer.encode(text))
        return n

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "_counts": {}}  # do not ship the memo to workers


def build_episode_document(
    prepared: PreparedData,
    slot: int,
    episode_id: int,
    config: Any,
    tokenizer: Tokenizer,
    *,
    count_tokens: TokenCounter | None = None,
) -> Document:
    """The document of pivot slot `slot` in episode `episode_id` (deterministic in the data seed).

    `count_tokens` (optional) is a reusable TokenCounter for `tokenizer`, to share its memo."""
    data = data_section(config)
    doc_cfg = DocumentConfig.from_config(data.document)
    if doc_cfg.token_range_active and count_tokens is None:
        count_tokens = TokenCounter(tokenizer)
    return build_document(
        prepared.pool,
        int(prepared.pivots[slot]),
        prepared.neighbours[slot],
        document_rng(data.seed, episode_id),
        doc_cfg,
        entities=prepared.entities[slot],
        count_tokens=count_tokens if doc_cfg.token_range_active else None,
    )


# The episode schema (module docstring): name -> (shape in terms of the config, dtype). Every episode, usable or
# skipped, is made by `_episode`, which checks the names and casts the dtypes.
EPISODE_FIELDS: dict[str, tuple[str, Any]] = {
    "tokens": ("[max_chunks, chunk_size]", np.int32),
    "chunk_lengths": ("[max_chunks]", np.int32),
    "num_chunks": ("[]", np.int32),
    "num_tokens": ("[]", np.int32),
    "answer": ("[]", np.str_),
    "answer_ids": ("[max_answer_tokens]", np.int32),
    "answer_length": ("[]", np.int32),
    "mask_count": ("[]", np.int32),
    "masks_kept": ("[]", np.int32),
    "tokenizer_id": ("[]", np.str_),
    "usable": ("[]", np.bool_),
    "pivot_index": ("[]", np.int32),
    "episode_id": ("[]", np.int64),
    "epoch": ("[]", np.int32),
    "seed": ("[]", np.int64),
}


def _episode(**values: Any) -> dict[str, np.ndarray]:
    """An episode dict in EPISODE_FIELDS' order and dtypes; a missing or unknown field is a bug."""
    if set(values) != set(EPISODE_FIELDS):
        raise AssertionError(f"episode fields {sorted(values)} differ from EPISODE_FIELDS {sorted(EPISODE_FIELDS)}")
    return {
        name: np.asarray(values[name], dtype) if shape != "[]" else dtype(values[name])
        for name, (shape, dtype) in EPISODE_FIELDS.items()
    }


def episode_from_document(
    document: Document | None,
    tokenizer: Tokenizer,
    *,
    chunk_size: int,
    max_chunks: int,
    max_answer_tokens: int,
    episode_id: int,
    epoch: int,
    seed: int,
    mask_token: str = "[MASK]",
    tokenizer_id: str | None = None,
    pivot_index: int = -1,
) -> dict[str, np.ndarray]:
    """Tokenises, truncates, chunks and pads one document into an episode dict (EPISODE_FIELDS).

    `document` None (its pivot was skipped) or a document whose every mask was truncated away gives an
    episode with `usable` False and no chunks (same fields and shapes). `tokenizer_id`:
    `tokenizer_fingerprint(tokenizer)` when the caller has it already; `pivot_index`: recorded for a skipped
    document."""
    usable = document is not None
    if usable:
        chunks = chunk_document(document.text, tokenizer, chunk_size, max_chunks, decode=False)
        kept = document.text if not chunks.num_dropped else tokenizer.decode(np.concatenate(chunks.tokens).tolist())
        masks_kept = kept.count(mask_token)
        usable = masks_kept > 0
    pad = tokenizer.pad_id
    common = dict(
        answer=document.gold if document is not None else "",
        mask_count=document.mask_count if document is not None else 0,
        tokenizer_id=tokenizer_id or tokenizer_fingerprint(tokenizer),
        usable=usable,
        pivot_index=document.pivot_index if document is not None else pivot_index,
        episode_id=episode_id,
        epoch=epoch,
        seed=seed,
    )
    if not usable:
        return _episode(
            tokens=np.full((max_chunks, chunk_size), pad),
            chunk_lengths=np.zeros((max_chunks,)),
            num_chunks=0,
            num_tokens=0,
            answer_ids=np.full((max_answer_tokens,), pad),
            answer_length=0,
            masks_kept=0,
            **common,
        )
    tokens, lengths = pad_chunks(chunks.tokens, max_chunks, chunk_size, pad)
    answer = np.asarray(tokenizer.encode(document.gold), dtype=np.int32)
    answer_ids = np.full((max_answer_tokens,), pad, dtype=np.int32)
    n_answer = min(len(answer), max_answer_tokens)
    answer_ids[:n_answer] = answer[:n_answer]
    return _episode(
        tokens=tokens,
        chunk_lengths=lengths,
        num_chunks=chunks.num_chunks,
        num_tokens=chunks.num_tokens,
        answer_ids=answer_ids,
        answer_length=n_answer,
        masks_kept=masks_kept,
        **common,
    )


def document_statistics(
    config: Any, prepared: PreparedData, tokenizer: Tokenizer, num_documents: int, epoch: int = 0
) -> dict[str, int]:
    """Builds the first `num_documents` episodes of `epoch` (slot order) and counts what the stream skips
    or keeps: documents whose gold leaks, whose truncation dropped every mask, whose pivot had only leaking
    entities (with `document.skip_leaking_entities`), and those used."""
    data = data_section(config)
    counter = TokenCounter(tokenizer)
    stats = {"documents": 0, "gold_leaks": 0, "skipped_all_masks_truncated": 0, "skipped_every_entity_leaks": 0}
    for slot in range(min(num_documents, prepared.num_pivots)):
        stats["documents"] += 1
        episode_id = epoch * prepared.num_pivots + slot
        try:
            document = build_episode_document(prepared, slot, episode_id, data, tokenizer, count_tokens=counter)
        except NoValidEntityError:
            stats["skipped_every_entity_leaks"] += 1
            continue
        stats["gold_leaks"] += entity_leaks(document.text, document.gold)
        episode = episode_from_document(
            document,
            tokenizer,
            chunk_size=data.chunking.chunk_size,
            max_chunks=data.chunking.max_chunks,
            max_answer_tokens=data.loader.max_answer_tokens,
            episode_id=episode_id,
            epoch=epoch,
            seed=data.seed,
            mask_token=data.document.mask_token,
        )
        stats["skipped_all_masks_truncated"] += int(not episode["usable"])
    stats["used"] = stats["documents"] - stats["skipped_all_masks_truncated"] - stats["skipped_every_entity_leaks"]
    return stats
