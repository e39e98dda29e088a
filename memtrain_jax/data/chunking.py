"""Document -> fixed-size token chunks, as the memory agent reads them (MemAgent's scheme).

The document is tokenised once, centre-truncated to at most `max_chunks * chunk_size` tokens
(the first `budget // 2` and the last `budget - budget // 2` tokens are kept, the middle is
dropped, as verl's "middle" truncation that MemAgent uses) and cut into consecutive chunks of
`chunk_size` tokens; only the last chunk may be shorter. Nothing else is ever dropped:
concatenating the chunks gives exactly the (truncated) token sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from memtrain_jax.tokenizer.base import Tokenizer


@dataclasses.dataclass(frozen=True)
class Chunks:
    """A chunked document. `tokens[i]`: `[len_i]` int32 with 1 <= len_i <= chunk_size."""

    tokens: tuple[np.ndarray, ...]
    texts: tuple[str, ...]  # decode(tokens[i]): the chunk text the agent sees (empty if not decoded)
    num_tokens: int  # tokens of the whole document, before truncation
    num_dropped: int  # tokens removed from the middle by truncation

    @property
    def num_chunks(self) -> int:
        return len(self.tokens)


def centre_truncate(ids: Sequence[int] | np.ndarray, budget: int) -> np.ndarray:
    """`[min(n, budget)]`: the ids, or their first `budget // 2` and last `budget - budget // 2`."""
    if budget < 1:
        raise ValueError(f"Truncation budget must be >= 1 token, got {budget}.")
    ids = np.asarray(ids, dtype=np.int32)
    if ids.ndim != 1:
        raise ValueError(f"Token ids must be 1-D, got shape {ids.shape}.")
    if len(ids) <= budget:
        return ids
    head = budget // 2
    return np.concatenate([ids[:head], ids[len(ids) - (budget - head) :]])


def split_chunks(ids: Sequence[int] | np.ndarray, chunk_size: int) -> tuple[np.ndarray, ...]:
    """Consecutive `[chunk_size]` pieces of `ids`; the last may be shorter; none for empty ids."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    ids = np.asarray(ids, dtype=np.int32)
    return tuple(ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size))


def chunk_tokens(
    ids: Sequence[int] | np.ndarray, chunk_size: int, max_chunks: int
) -> tuple[tuple[np.ndarray, ...], int]:
    """Centre-truncates to `max_chunks * chunk_size` and splits; returns (chunks, tokens dropped)."""
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1, got {max_chunks}.")
    ids = np.asarray(ids, dtype=np.int32)
    kept = centre_truncate(ids, max_chunks * chunk_size)
    return split_chunks(kept, chunk_size), len(ids) - len(kept)


def chunk_document(text: str, tokenizer: Tokenizer, chunk_size: int, max_chunks: int, *, decode: bool = True) -> Chunks:
    """Tokenises `text` (no BOS/EOS), truncates and chunks it; with `decode`, also decodes each chunk
    (for display and probes; the training pipeline only needs the ids and skips it)."""
    if not text:
        raise ValueError("Cannot chunk an empty document.")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    chunks, dropped = chunk_tokens(ids, chunk_size, max_chunks)
    return Chunks(
        tokens=chunks,
        texts=tuple(tokenizer.decode(c.tolist()) for c in chunks) if decode else (),
        num_tokens=len(ids),
        num_dropped=dropped,
    )


def pad_chunks(
    chunks: Sequence[np.ndarray], max_chunks: int, chunk_size: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stacks chunks into `tokens: [max_chunks, chunk_size]` int32 (pad_id after each chunk's end,
    absent chunks all pad) and `lengths: [max_chunks]` int32 (0 for absent chunks)."""
    if len(chunks) > max_chunks:
        raise ValueError(f"{len(chunks)} chunks do not fit max_chunks={max_chunks}.")
    tokens = np.full((max_chunks, chunk_size), pad_id, dtype=np.int32)
    lengths = np.zeros((max_chunks,), dtype=np.int32)
    for i, c in enumerate(chunks):
        if len(c) > chunk_size:
            raise ValueError(f"Chunk {i} has {len(c)} tokens, more than chunk_size={chunk_size}.")
        tokens[i, : len(c)] = c
        lengths[i] = len(c)
    return tokens, lengths
