"""Chunking: budget never exceeded, only the middle is dropped, chunks tile the kept tokens."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memtrain_jax.data.chunking import centre_truncate, chunk_document, chunk_tokens, pad_chunks, split_chunks
from memtrain_jax.data.sources import load_pool
from memtrain_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [p.text for p in load_pool("wiki_offline")[:2000]]
    return SentencePieceTokenizer(train_sentencepiece(texts, str(tmp_path_factory.mktemp("spm") / "spm"), 2000))


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 400), chunk_size=st.integers(1, 40), max_chunks=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_chunk_tokens_properties(n, chunk_size, max_chunks, seed):
    ids = np.random.default_rng(seed).integers(0, 1000, size=n).astype(np.int32)
    chunks, dropped = chunk_tokens(ids, chunk_size, max_chunks)
    budget = chunk_size * max_chunks
    kept = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    # Never exceeds the budget; nothing dropped unless over budget.
    assert len(chunks) <= max_chunks and len(kept) == min(n, budget) and dropped == max(0, n - budget)
    # Fixed-size chunks, only the last may be shorter (and is never empty).
    assert all(len(c) == chunk_size for c in chunks[:-1])
    assert all(1 <= len(c) <= chunk_size for c in chunks)
    # No token lost except the middle: head + tail of the original, in order.
    if n <= budget:
        np.testing.assert_array_equal(kept, ids)
    else:
        head = budget // 2
        np.testing.assert_array_equal(kept, np.concatenate([ids[:head], ids[n - (budget - head) :]]))


def test_centre_truncate_exact_values():
    ids = np.arange(10)
    np.testing.assert_array_equal(centre_truncate(ids, 5), [0, 1, 7, 8, 9])
    np.testing.assert_array_equal(centre_truncate(ids, 4), [0, 1, 8, 9])
    np.testing.assert_array_equal(centre_truncate(ids, 10), ids)
    np.testing.assert_array_equal(centre_truncate(ids, 1), [9])
    assert [c.tolist() for c in split_chunks(np.arange(7), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="budget"):
        centre_truncate(ids, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        split_chunks(ids, 0)
    with pytest.raises(ValueError, match="max_chunks"):
        chunk_tokens(ids, 2, 0)


def test_chunk_document_round_trips_text(tokenizer):
    text = "\n\n".join(f"Document {i + 1}:\n{p.text}" for i, p in enumerate(load_pool("wiki_offline")[:6]))
    ids = tokenizer.encode(text)
    chunks = chunk_document(text, tokenizer, chunk_size=64, max_chunks=100)
    assert chunks.num_tokens == len(ids) and chunks.num_dropped == 0
    assert np.concatenate(chunks.tokens).tolist() == ids
    assert chunks.texts == tuple(tokenizer.decode(c.tolist()) for c in chunks.tokens)
    assert "".join(chunks.texts) == text  # the tokenizer is lossless and chunks tile the ids

    small = chunk_document(text, tokenizer, chunk_size=64, max_chunks=3)
    assert small.num_chunks == 3 and small.num_dropped == len(ids) - 192
    assert np.concatenate(small.tokens).tolist() == ids[:96] + ids[-96:]
    with pytest.raises(ValueError, match="empty"):
        chunk_document("", tokenizer, 8, 2)


def test_pad_chunks():
    chunks = (np.array([5, 6, 7], np.int32), np.array([8], np.int32))
    tokens, lengths = pad_chunks(chunks, max_chunks=3, chunk_size=3, pad_id=0)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [8, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1, 0])
    assert tokens.dtype == lengths.dtype == np.int32
    with pytest.raises(ValueError, match="max_chunks=1"):
        pad_chunks(chunks, max_chunks=1, chunk_size=3, pad_id=0)
    with pytest.raises(ValueError, match="chunk_size=2"):
        pad_chunks(chunks, max_chunks=3, chunk_size=2, pad_id=0)
