"""Attention backends at MemTrain's prefill lengths: time and error of each against the reference.

For SmolLM2-135M's attention shape (9 query heads, 3 kv heads, head dim 64), a batch of left-padded rows
(the first row full, the others with a quarter of padding) and each prompt length, runs the causal
self-attention of one layer with every backend usable on this machine (memtrain_jax/model/attention.py:
reference, blocked, and on its own platform splash or cudnn), jitted, and prints the median time, the
achieved TFLOP/s (causal: 2 * 2 * B * N * D * T^2 / 2) and the largest error against `reference` run in
float32 on the same inputs, over the real tokens. The blocked kernel runs at each `--blocks` size
(block_q x block_kv; the model's default is 256x512). On CPU the peer, torch's fused
`scaled_dot_product_attention` (causal, GQA), runs on the same inputs, each row on its real tokens (a
left-padded row's real tokens are a causal self-attention of their own); every row's TFLOP/s is also
given as a fraction of its library's float32 matmul peak, measured in the same process.

    python benchmarks/bench_attention.py [--lengths 2048 7168] [--batch 2] [--dtype bfloat16]
        [--blocks 256x512 512x512]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import matmul_peaks

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


def torch_sdpa(q, k, v, key_valid):
    """The peer on CPU: a call running torch's fused causal GQA attention of each row's real (unpadded) tokens and
    returning [B, N, T, D] (torch's layout; padding queries stay zero), or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    tq = torch.from_numpy(np.array(q, np.float32)).transpose(1, 2)  # [B, N, T, D]
    tk, tv = (torch.from_numpy(np.array(x, np.float32)) for x in (k, v))  # [B, K, T, D]
    starts = [int(np.argmax(row)) for row in np.asarray(key_valid)]
    out = torch.zeros_like(tq)

    def run():
        with torch.no_grad():
            for b, s in enumerate(starts):
                out[b : b + 1, :, s:] = torch.nn.functional.scaled_dot_product_attention(
                    tq[b : b + 1, :, s:], tk[b : b + 1, :, s:], tv[b : b + 1, :, s:], is_causal=True, enable_gqa=True
                )
        return out

    return run


def block_sizes(text: str) -> tuple[int, int]:
    """--blocks value "256x512" -> (256, 512); anything else is refused with the value shown."""
    try:
        block_q, block_kv = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a block size is BLOCK_QxBLOCK_KV, e.g. 256x512; got {text!r}") from None
    return block_q, block_kv


def report(length: int, name: str, seconds: float, flops: float, out, exact, valid, peak: float | None) -> None:
    """One table row: time, TFLOP/s, its fraction of `peak` (None: not measured) and the error over real tokens."""
    err = np.abs(np.asarray(out, np.float32) - np.asarray(exact))[valid].max()
    share = f"{flops / seconds / peak:8.2f}" if peak else f"{'':>8}"
    print(f"{length:7d} {name:>18} {seconds * 1e3:9.2f} {flops / seconds / 1e12:8.2f} {share} {err:27.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 7168])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blocks", nargs="+", type=block_sizes, default=[(256, 512)], help="blocked: QxKV sizes")
    args = parser.parse_args()
    platform = jax.default_backend()
    # (row name, backend, block sizes): the blocked kernel at each --blocks size, the others at attention()'s defaults.
    kernels = {"tpu": ["splash"], "gpu": ["cudnn"]}.get(platform, [])
    backends = (
        [("reference", "reference", {})]
        + [(f"blocked {bq}x{bk}", "blocked", {"block_q": bq, "block_kv": bk}) for bq, bk in args.blocks]
        + [(name, name, {}) for name in kernels]
    )
    dtype = jnp.dtype(args.dtype)
    peaks = matmul_peaks() if platform == "cpu" else {}
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; batch {args.batch}, {args.dtype}, heads "
          f"{HEADS}/{KV_HEADS} x {HEAD_DIM}")  # fmt: skip
    if peaks:
        print(
            "float32 matmul peak (GFLOP/s): " + ", ".join(f"{name} {flops / 1e9:.0f}" for name, flops in peaks.items())
        )
    print(f"{'length':>7} {'backend':>18} {'ms':>9} {'TFLOP/s':>8} {'of peak':>8} {'max |err| vs f32 reference':>27}")
    for length in args.lengths:
        q, k, v, key_valid = inputs(args.batch, length, dtype)
        exact = reference_attention(
            q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), attention_mask(key_valid, 0, length)
        )
        flops = 2 * 2 * args.batch * HEADS * HEAD_DIM * length * length / 2
        valid = np.asarray(key_valid)
        for name, backend, blocks in backends:
            fn = jax.jit(lambda q, k, v, m, b=backend, kw=blocks: attention(q, k, v, m, 0, backend=b, **kw))
            try:
                seconds = median_time(fn, q, k, v, key_valid, repeats=args.repeats)
                out = fn(q, k, v, key_valid)
            except Exception as e:  # e.g. the reference's [T, T] scores do not fit; report and go on
                print(f"{length:7d} {name:>18} failed: {type(e).__name__}: {str(e)[:120]}")
                continue
            report(length, name, seconds, flops, out, exact, valid, peaks.get("jax"))
        peer = torch_sdpa(q, k, v, key_valid) if platform == "cpu" and dtype == jnp.float32 else None
        if peer is not None:
            seconds = median_time(peer, repeats=args.repeats)
            out = peer().transpose(1, 2).numpy()
            report(length, "torch sdpa (peer)", seconds, flops, out, exact, valid, peaks.get("torch"))


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()  # as `memtrain` does (memtrain_jax/host_memory.py)
    main()
