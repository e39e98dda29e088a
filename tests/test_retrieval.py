"""Retrieval: near-duplicates come first, rankings match reference formulas, caches never go stale."""

import json
import math
import os

import bm25s
import numpy as np
import pytest
import transformers

from memtrain_jax.data import retrieval
from memtrain_jax.data.sources import load_pool
from memtrain_jax.data.types import Paragraph


@pytest.fixture(scope="module")
def pool():
    return load_pool("wiki_offline")


@pytest.fixture(scope="module")
def dense():
    """One dense retriever for the module: the model loads once; each test rebuilds the index.
    128 tokens per text halves the CPU cost; the near-duplicate pivots are shorter than that."""
    return retrieval.DenseRetriever(batch_size=32, max_length=128)


def _near_duplicate(p: Paragraph) -> Paragraph:
    """The paragraph with its last sentence replaced by an unrelated one."""
    sentences = p.text.split(". ")
    assert len(sentences) >= 3, p.text
    changed = ". ".join(sentences[:-1] + ["The committee later moved its annual meeting to a different venue."])
    assert changed != p.text
    return Paragraph(id=p.id + "-dup", title=p.title, text=changed)


def _pivots_with_sentences(pool, n, start=0, max_chars=10**9):
    out = []
    for i in range(start, len(pool)):
        if len(pool[i].text.split(". ")) >= 4 and len(pool[i].text) <= max_chars:
            out.append(i)
        if len(out) == n:
            return out
    raise AssertionError("not enough multi-sentence paragraphs")


def _check_near_duplicates_first(retriever, paragraphs, pivots):
    augmented = list(paragraphs) + [_near_duplicate(paragraphs[i]) for i in pivots]
    retriever.build(augmented)
    dup_ids = np.arange(len(paragraphs), len(augmented))
    ids, scores = retriever.search(np.asarray(pivots), k=5)
    np.testing.assert_array_equal(ids[:, 0], dup_ids)
    assert (ids != np.asarray(pivots)[:, None]).all(), "an id query returned itself"
    assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores are not sorted best first"
    # And the other way round: the duplicate's best match is its original.
    ids_back, _ = retriever.search(dup_ids, k=3)
    np.testing.assert_array_equal(ids_back[:, 0], pivots)
    # A text query with the duplicate's text finds the duplicate (itself is allowed for text queries).
    text_ids, _ = retriever.search([augmented[d].text for d in dup_ids], k=2)
    np.testing.assert_array_equal(text_ids[:, 0], dup_ids)


def test_bm25_retrieves_near_duplicate_first_on_shipped_pool(pool):
    _check_near_duplicates_first(retrieval.BM25Retriever(), pool, _pivots_with_sentences(pool, 5, start=100))


def test_dense_retrieves_near_duplicate_first(pool, dense):
    subset = pool[:200]  # a subset keeps the CPU embedding pass to seconds
    pivots = _pivots_with_sentences(subset, 3, start=10, max_chars=400)
    tok = transformers.AutoTokenizer.from_pretrained(retrieval.default_dense_model_path(), local_files_only=True)
    assert all(len(tok(subset[i].text)["input_ids"]) < 128 for i in pivots), "the changed sentence must be embedded"
    _check_near_duplicates_first(dense, subset, pivots)


def _reference_bm25(docs_tokens, query_tokens, k1=1.5, b=0.75):
    """Lucene BM25 (no (k1 + 1) factor), written out: idf = ln(1 + (N - df + .5) / (df + .5))."""
    n = len(docs_tokens)
    avgdl = sum(len(d) for d in docs_tokens) / n
    df = {}
    for d in docs_tokens:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    scores = np.zeros(n)
    for j, d in enumerate(docs_tokens):
        for t in query_tokens:
            if t not in df:
                continue
            tf = d.count(t)
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            scores[j] += idf * tf / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return scores


def test_bm25_scores_match_reference_formula(pool):
    paragraphs = pool[200:260]
    r = retrieval.BM25Retriever()
    r.build(paragraphs)
    tokens = bm25s.tokenize([p.text for p in paragraphs], stopwords="english", return_ids=False, show_progress=False)
    queries = [0, 7, 33]
    ids, scores = r.search(queries, k=6)
    for row, q in enumerate(queries):
        ref = _reference_bm25(tokens, tokens[q])
        ref[q] = -np.inf
        np.testing.assert_allclose(scores[row], ref[ids[row]], rtol=1e-4)
        np.testing.assert_allclose(scores[row], np.sort(ref)[::-1][:6], rtol=1e-4)


def test_dense_embeddings_are_unit_norm_and_padding_invariant(pool, dense):
    r = dense
    short = [pool[3].text[:60], "Paris is the capital of France."]
    alone = np.stack([r.embed([t])[0] for t in short])
    # In one batch with long texts the short ones are padded; pooling must ignore the padding.
    mixed = r.embed(short + [pool[5].text, pool[6].text])[:2]
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(mixed, alone, atol=1e-5)


def test_dense_search_is_exact_inner_product(pool, dense):
    r = dense
    r.build(pool[:40])
    e = r.embeddings
    queries = np.arange(0, 40, 3)
    r.search_batch_size = 4  # several query batches
    try:
        ids, scores = r.search(queries, k=5)
    finally:
        r.search_batch_size = 1024
    full = e[queries] @ e.T
    full[np.arange(len(queries)), queries] = -np.inf
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-5)


def test_search_argument_errors(pool):
    r = retrieval.BM25Retriever()
    with pytest.raises(RuntimeError, match="build"):
        r.search([0], 1)
    r.build(pool[:10])
    with pytest.raises(ValueError, match=r"k=10 must be in \[1, 9\]"):
        r.search([0], 10)
    with pytest.raises(IndexError, match="pool indices"):
        r.search([10], 1)
    with pytest.raises(TypeError, match="mixture"):
        r.search([0, "text"], 1)
    with pytest.raises(TypeError, match="wrap"):
        r.search("a single string", 1)


def test_make_retriever_names():
    assert isinstance(retrieval.make_retriever("bm25", k1=1.2), retrieval.BM25Retriever)
    with pytest.raises(ValueError, match="'bm25x'"):
        retrieval.make_retriever("bm25x")


def test_index_cache_reuse_mismatch_and_corruption(pool, tmp_path):
    paragraphs = pool[:200]
    logs = []
    d1 = retrieval.load_or_build_index(retrieval.BM25Retriever(), paragraphs, tmp_path, log=logs.append)
    assert any("building" in m for m in logs)
    logs.clear()
    r = retrieval.BM25Retriever()
    d2 = retrieval.load_or_build_index(r, paragraphs, tmp_path, log=logs.append)
    assert d1 == d2 and any("loaded" in m for m in logs)
    # The loaded index answers exactly like a fresh one.
    fresh = retrieval.BM25Retriever()
    fresh.build(paragraphs)
    np.testing.assert_array_equal(r.search(np.arange(20), 4)[0], fresh.search(np.arange(20), 4)[0])

    # Another pool or other settings get another key (no stale reuse).
    other = retrieval.load_or_build_index(retrieval.BM25Retriever(), pool[1:201], tmp_path, log=None)
    assert other != d1
    assert retrieval.load_or_build_index(retrieval.BM25Retriever(k1=1.2), paragraphs, tmp_path, log=None) != d1

    # Loading a directory for the wrong pool is a clear error.
    with pytest.raises(retrieval.RetrievalCacheError, match="pool_fingerprint"):
        retrieval.BM25Retriever().load(d1, pool[1:201])

    # A corrupt cache is reported, and rebuild=True replaces it.
    with open(os.path.join(d1, "meta.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(retrieval.RetrievalCacheError, match="rebuild"):
        retrieval.load_or_build_index(retrieval.BM25Retriever(), paragraphs, tmp_path, log=None)
    retrieval.load_or_build_index(retrieval.BM25Retriever(), paragraphs, tmp_path, rebuild=True, log=None)
    with open(os.path.join(d1, "meta.json")) as f:
        assert json.load(f)["size"] == 200


def test_dense_cache_detects_bad_embeddings(pool, dense, tmp_path):
    d = retrieval.load_or_build_index(dense, pool[:20], tmp_path, log=None)
    loaded = retrieval.DenseRetriever(max_length=dense.max_length)
    logs = []
    retrieval.load_or_build_index(loaded, pool[:20], tmp_path, log=logs.append)
    assert any("loaded" in m for m in logs)
    np.testing.assert_array_equal(loaded.embeddings, dense.embeddings)
    np.save(os.path.join(d, "embeddings.npy"), np.ones((20, 384), np.float32))
    with pytest.raises(retrieval.RetrievalCacheError, match="unit-norm"):
        retrieval.load_or_build_index(
            retrieval.DenseRetriever(max_length=dense.max_length), pool[:20], tmp_path, log=None
        )


def test_neighbour_table_matches_search(pool):
    r = retrieval.BM25Retriever()
    r.build(pool[:300])
    pivots = np.asarray([5, 17, 250, 99])
    table = retrieval.neighbour_table(r, pivots, 3, batch_size=3, log=None)
    assert table.dtype == np.int32 and table.shape == (4, 3)
    np.testing.assert_array_equal(table, r.search(pivots, 3)[0])
