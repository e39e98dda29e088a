"""Data-pipeline throughput: documents/s and retrieval index build time.

    python benchmarks/bench_data.py                       # shipped pool + 300k synthetic pool
    python benchmarks/bench_data.py --pools shipped --workers 0 --batches 4

For each pool (the shipped 10k wiki_offline summaries; a synthetic pool of `--num_synthetic`
generated paragraphs) it times the BM25 index build, the dense index build on a subset
(all-MiniLM-L6-v2 on CPU; the paragraphs/s figure extrapolates to the pool), pivot selection and
neighbour search, then the Grain pipeline's episodes/s with 0 and 2 worker processes.
Documents use the paper's sizes by default (150 paragraphs, 29 similar, 24k-40k tokens, 8 chunks
of 5,120 tokens) with a SentencePiece tokenizer trained on the pool; `--sizes cpu` uses the CPU
preset's. Throughput excludes the first batch (worker start-up, reported separately).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from memtrain_jax.config import load_config
from memtrain_jax.data import prepare, retrieval, stream
from memtrain_jax.data.types import Paragraph

_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ren",
    "tu",
    "sa",
    "vor",
    "el",
    "in",
    "dra",
    "po",
    "ne",
    "shi",
    "ba",
    "gul",
    "te",
    "ar",
    "os",
)


def synthetic_pool(n: int, seed: int = 0) -> list[Paragraph]:
    """`n` paragraphs of Zipf-distributed pseudo-words with capitalised names, years and sentences.

    Topics (a shared preferred vocabulary per group of paragraphs) give retrieval something to find.
    """
    rng = np.random.default_rng(seed)
    vocab = np.array(
        sorted({"".join(rng.choice(_SYLLABLES, size=rng.integers(1, 4))) for _ in range(40_000)}), dtype=object
    )
    names = np.array(
        [w.capitalize() + " " + v.capitalize() for w, v in zip(vocab[::7][:5000], vocab[3::11][:5000], strict=True)]
    )
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    lengths = rng.integers(40, 130, size=n)
    words = rng.choice(len(vocab), size=int(lengths.sum()), p=zipf)
    topics = rng.integers(0, 2000, size=n)
    topic_words = rng.integers(0, len(vocab), size=(2000, 12))
    pool, start = [], 0
    for i in range(n):
        w = vocab[words[start : start + lengths[i]]].copy()
        start += lengths[i]
        k = rng.integers(3, 8)
        w[rng.integers(0, len(w), size=k)] = vocab[topic_words[topics[i], rng.integers(0, 12, size=k)]]
        w[0] = w[0].capitalize()
        for pos in range(12, len(w) - 1, 14):  # sentence ends
            w[pos] += "."
            w[pos + 1] = w[pos + 1].capitalize()
        w[rng.integers(1, len(w))] = names[rng.integers(len(names))]
        w[rng.integers(1, len(w))] = f"in {int(rng.integers(1000, 2025))}"
        pool.append(Paragraph(id=f"syn{i}", title=f"syn{i}", text=" ".join(w) + "."))
    return pool


def _timed(label: str, fn):
    start = time.perf_counter()
    out = fn()
    print(f"  {label}: {time.perf_counter() - start:.2f}s", flush=True)
    return out, time.perf_counter() - start


def _config(args: argparse.Namespace, name: str, num_documents: int):
    config = load_config("data.py:cpu")
    config.cache_dir = os.path.join(args.cache_dir, name)
    config.num_documents = num_documents
    config.retrieval.name = "bm25"
    config.entities.extractor = "rules"
    config.loader.batch_size = args.batch_size
    config.loader.shard_index, config.loader.shard_count = 0, 1
    config.loader.worker_buffer_size = 2
    if args.sizes == "paper":
        paper = load_config("data.py:paper")
        config.document = paper.document
        config.chunking = paper.chunking
    return config


def bench_pool(args: argparse.Namespace, name: str, pool: list[Paragraph], num_documents: int) -> dict[str, float]:
    print(f"\n== {name}: {len(pool)} paragraphs ==", flush=True)
    config = _config(args, name, num_documents)
    results: dict[str, float] = {}
    bm25 = retrieval.BM25Retriever()
    _, results["bm25_build_s"] = _timed("BM25 index build", lambda: bm25.build(pool))
    dense = retrieval.DenseRetriever(batch_size=64)
    subset = pool[: args.dense_subset]
    dense.embed(["warm-up"])
    _, dense_s = _timed(f"dense embed of {len(subset)} paragraphs", lambda: dense.build(subset))
    results["dense_paragraphs_per_s"] = len(subset) / dense_s
    results["dense_build_s_extrapolated"] = len(pool) / results["dense_paragraphs_per_s"]
    print(
        f"  dense: {results['dense_paragraphs_per_s']:.1f} paragraphs/s"
        f" -> whole pool ~{results['dense_build_s_extrapolated']:.0f}s"
    )

    tok_pool = pool[: args.tokenizer_paragraphs]
    tokenizer, _ = _timed("tokenizer (train or load)", lambda: prepare.load_tokenizer(config, tok_pool, log=None))
    config.retrieval.rebuild = True
    prepared, results["prepare_s"] = _timed(
        f"prepare (BM25 build + {num_documents} pivots + neighbours)",
        lambda: prepare.prepare_data(config, pool=pool, log=None),
    )
    config.retrieval.rebuild = False
    for workers in args.workers:
        config.loader.worker_count = workers
        it = stream.make_iterator(config, prepared, tokenizer)
        start = time.perf_counter()
        first = next(it)
        startup = time.perf_counter() - start
        start = time.perf_counter()
        tokens = 0
        for _ in range(args.batches):
            batch = next(it)
            tokens += int(batch["num_tokens"].sum())
        elapsed = time.perf_counter() - start
        if hasattr(it, "close"):
            it.close()
        docs = args.batches * args.batch_size
        results[f"docs_per_s_w{workers}"] = docs / elapsed
        print(
            f"  pipeline, {workers} workers: {docs / elapsed:.2f} documents/s "
            f"({tokens / docs:.0f} tokens/document, {int(first['num_chunks'].mean())} chunks,"
            f" first batch {startup:.1f}s)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", default="shipped,synthetic", help="comma list of shipped, synthetic")
    parser.add_argument("--num_synthetic", type=int, default=300_000)
    parser.add_argument("--sizes", choices=("paper", "cpu"), default="paper")
    parser.add_argument("--workers", default="0,2", help="comma list of worker counts")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per setting")
    parser.add_argument("--num_documents", type=int, default=512, help="pivots to prepare per pool")
    parser.add_argument("--dense_subset", type=int, default=256)
    parser.add_argument("--tokenizer_paragraphs", type=int, default=20_000)
    parser.add_argument("--cache_dir", default="cache/bench")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    all_results = {}
    for name in args.pools.split(","):
        if name == "shipped":
            from memtrain_jax.data.sources import load_pool

            pool = load_pool("wiki_offline")
        elif name == "synthetic":
            pool, _ = _timed(
                f"generate {args.num_synthetic} synthetic paragraphs", lambda: synthetic_pool(args.num_synthetic)
            )
        else:
            raise ValueError(f"Unknown pool {name!r}; choose shipped or synthetic.")
        all_results[name] = bench_pool(args, name, pool, args.num_documents)
    print("\n== summary ==")
    for name, res in all_results.items():
        print(name, " ".join(f"{k}={v:.2f}" for k, v in res.items()))


if __name__ == "__main__":  # required: grain worker processes are started with "spawn"
    main()
