"""Attention backends at MemTrain's prefill lengths: time and error of each against the reference.

For SmolLM2-135M's attention shape (9 query heads, 3 kv heads, head dim 64), a batch of left-padded rows
(the first row full, the others with a quarter of padding) and each prompt length, runs the causal
self-attention of one layer with every backend usable on this machine (memtrain_jax/model/attention.py:
reference, blocked, and on its own platform splash or cudnn), jitted, and prints the median time, the
achieved TFLOP/s (causal: 2 * 2 * B * N * D * T^2 / 2) and the largest error against `reference` run in
float32 on the same inputs, over the real tokens.

    python benchmarks/bench_attention.py [--lengths 2048 7168] [--batch 2] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax.model.attention import attention, attention_mask, reference_attention

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M


def inputs(batch: int, length: int, dtype, seed: int = 0):
    """q [B, T, N, D], k, v [B, K, T, D], key_valid [B, T] (row 0 full, others 1/4 left padding)."""
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (batch, length, HEADS, HEAD_DIM), jnp.float32)
    k = jax.random.normal(keys[1], (batch, KV_HEADS, length, HEAD_DIM), jnp.float32)
    v = jax.random.normal(keys[2], (batch, KV_HEADS, length, HEAD_DIM), jnp.float32)
    pad = np.zeros(batch, np.int32)
    pad[1:] = length // 4
    key_valid = jnp.asarray(np.arange(length)[None, :] >= pad[:, None])
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), key_valid


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 7168])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    platform = jax.default_backend()
    backends = ["reference", "blocked"] + {"tpu": ["splash"], "gpu": ["cudnn"]}.get(platform, [])
    dtype = jnp.dtype(args.dtype)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; batch {args.batch}, {args.dtype}, heads "
          f"{HEADS}/{KV_HEADS} x {HEAD_DIM}")  # fmt: skip
    print(f"{'length':>7} {'backend':>10} {'ms':>9} {'TFLOP/s':>8} {'max |err| vs f32 reference':>27}")
    for length in args.lengths:
        q, k, v, key_valid = inputs(args.batch, length, dtype)
        exact = reference_attention(
            q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), attention_mask(key_valid, 0, length)
        )
        flops = 2 * 2 * args.batch * HEADS * HEAD_DIM * length * length / 2
        for backend in backends:
            fn = jax.jit(lambda q, k, v, m, b=backend: attention(q, k, v, m, 0, backend=b))
            try:
                seconds = median_time(fn, q, k, v, key_valid, repeats=args.repeats)
                out = np.asarray(fn(q, k, v, key_valid), np.float32)
            except Exception as e:  # e.g. the reference's [T, T] scores do not fit; report and go on
                print(f"{length:7d} {backend:>10} failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            valid = np.asarray(key_valid)
            err = np.abs(out - np.asarray(exact))[valid].max()
            print(f"{length:7d} {backend:>10} {seconds * 1e3:9.2f} {flops / seconds / 1e12:8.2f} {err:27.2e}")


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()  # as `memtrain` does (memtrain_jax/host_memory.py)
    main()
