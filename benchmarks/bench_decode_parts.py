"""Where a decode step's time goes: the whole sampled decode loop against its parts, each timed on its own.

SmolLM2-135M's shapes with random weights, `--rows` rows of `--prompt`-token prompts (each row its own prompt, as
the memory turns of a GRPO step), `--steps` tokens sampled at T = 0.7. For each row count it prints the loop's
milliseconds per model step and, per step, the parts a step is made of, each over the step's real bytes and FLOPs:

* projections: the 30 layers' q, k, v, o, gate, up and down matmuls on [rows, hidden] inputs (the real kernels);
* head: the tied [V, H] embedding contracted with [rows, H] as `Transformer` does (no transpose);
* attention: `attention._dense_pass` (the decode path of the blocked backend) over 30 layers' own K/V buffers of
  prompt + steps slots;
* the rest: the loop minus the three (norms, rotary, cache writes, sampling, loop control); negative where the
  step runs parts side by side that the benchmark times apart (XLA:CPU runs independent ops on both cores).

Each part's roofline is the larger of its bytes over the copy bandwidth and its FLOPs over the matmul peak, both
measured in the same process as `bench_step.py` measures them; the fraction printed is roofline / measured
(1.0 = at the limit).

    python benchmarks/bench_decode_parts.py --rows 8,16,64,128
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, copy_bandwidth, matmul_peaks

from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.model.attention import _dense_pass
from memtrain_jax.model.presets import preset_values
from memtrain_jax.model.transformer import init_cache
from memtrain_jax.sampler.sampler import decode_loop, decode_state, next_token_logits

PROJECTIONS = (("attn", "q_proj"), ("attn", "k_proj"), ("attn", "v_proj"), ("attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))  # fmt: skip


def loop_ms(config: ModelConfig, params, rows: int, prompt: int, steps: int, runs: int) -> float:
    """Milliseconds per model step of `decode_loop` sampling `steps` tokens after a prefilled prompt."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 1000, (rows, prompt)), jnp.int32)
    cache = init_cache(config, rows, prompt + steps)
    fill = jax.jit(lambda p, c: next_token_logits(config, p, tokens, jnp.ones((rows, prompt), bool), c))
    logits, cache = fill(params, cache)
    budget = jnp.full((rows,), steps, jnp.int32)
    no_stop = jnp.full((rows, 1), -1, jnp.int32)

    @jax.jit
    def run(params, cache, logits):
        state = decode_state(cache, budget, steps)
        state = decode_loop(config, params, state, jax.random.key(1), jnp.arange(rows), budget, no_stop, 0.7, 1.0,
                            logits=logits)  # fmt: skip
        return state["tokens"]

    return best_time(lambda: run(params, cache, logits).block_until_ready(), runs) / steps * 1e3


def projections_ms(params, rows: int, runs: int) -> tuple[float, int]:
    """(ms, weight bytes) of every layer's projections applied to [rows, ...] inputs."""
    layers = [params[name] for name in sorted(params) if name.startswith("layers_")]
    kernels = [layer[a][b]["kernel"] for layer in layers for a, b in PROJECTIONS]
    hidden = kernels[-1].shape[-1]  # down_proj's output
    # as matrices [in, out]: q, k, v [H, N, D] -> [H, N * D]; o [N, D, H] -> [N * D, H]
    kernels = [w.reshape(hidden, -1) if w.ndim == 3 and w.shape[0] == hidden else w.reshape(-1, w.shape[-1])
               for w in kernels]  # fmt: skip

    @jax.jit
    def run(kernels, scale):
        return sum(jnp.sum(jnp.full((rows, w.shape[0]), scale, w.dtype) @ w) for w in kernels)

    ms = best_time(lambda: run(kernels, jnp.float32(1.0)).block_until_ready(), runs) * 1e3
    return ms, sum(w.size * w.dtype.itemsize for w in kernels)


def head_ms(params, rows: int, runs: int) -> tuple[float, int]:
    embedding = params["embedder"]["embedding"]
    x = jax.random.normal(jax.random.key(2), (rows, embedding.shape[1]), embedding.dtype)
    head = jax.jit(lambda x, e: jnp.einsum("bh,vh->bv", x, e, preferred_element_type=jnp.float32))
    return best_time(lambda: head(x, embedding).block_until_ready(), runs) * 1e3, embedding.size * 4


def attention_ms(config: ModelConfig, rows: int, slots: int, runs: int) -> tuple[float, int]:
    """(ms, K/V bytes) of one decode query per row over every layer's own [rows, K, slots, D] buffers."""
    kh, g, d = config.num_kv_heads, config.num_heads // config.num_kv_heads, config.head_dim
    keys = jax.random.split(jax.random.key(3), 2 * config.num_layers)
    ks = [jax.random.normal(k, (rows, kh, slots, d)) for k in keys[: config.num_layers]]
    vs = [jax.random.normal(k, (rows, kh, slots, d)) for k in keys[config.num_layers :]]
    q = jax.random.normal(jax.random.key(4), (rows, kh, g, d))
    valid = jnp.ones((rows, slots), bool)
    row_slots = jnp.full((g,), slots - 1)

    @jax.jit
    def run(q, ks, vs):
        for k, v in zip(ks, vs, strict=True):  # layer after layer, as in the model: each query needs the last output
            _, denom, acc = _dense_pass(q, k, v, valid, row_slots, 1 / math.sqrt(d))
            q = q + 1e-3 * acc / denom[..., None]
        return q

    ms = best_time(lambda: jax.block_until_ready(run(q, ks, vs)), runs) * 1e3
    return ms, 2 * config.num_layers * rows * kh * slots * d * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="8,16,64,128")
    parser.add_argument("--prompt", type=int, default=320, help="prompt tokens a row (memory turns: 250-333)")
    parser.add_argument("--steps", type=int, default=96, help="tokens sampled a row (the memory budget)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    config = ModelConfig(**preset_values("smollm2-135m"))
    params = init_params(config, jax.random.key(0))
    # the limits as bench_step.py takes them: the best matmul of jax, numpy and torch; the copy's read + write
    peak, bandwidth = max(matmul_peaks().values()), copy_bandwidth(False)
    print(f"SmolLM2-135M shapes, random weights; prompts {args.prompt} tokens, {args.steps} sampled; matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s, copy bandwidth {bandwidth / 1e9:.1f} GB/s (this process)")  # fmt: skip
    header = ("rows", "part", "ms/step", "share", "MB", "GFLOP", "roofline ms", "fraction")
    print("{:>5} {:<12} {:>8} {:>6} {:>7} {:>6} {:>11} {:>8}".format(*header))
    slots = args.prompt + args.steps
    h, v = config.hidden_size, config.vocab_size
    for rows in (int(r) for r in args.rows.split(",")):
        whole = loop_ms(config, params, rows, args.prompt, args.steps, args.runs)
        proj, proj_bytes = projections_ms(params, rows, args.runs)
        head, head_bytes = head_ms(params, rows, args.runs)
        att, att_bytes = attention_ms(config, rows, slots, args.runs)
        # attention: scores and weighted values, 2 x 2 FLOPs per query head, slot and head dim
        att_flops = 4 * config.num_layers * rows * config.num_heads * slots * config.head_dim
        parts = {
            "projections": (proj, proj_bytes, 2 * rows * proj_bytes / 4),
            "head": (head, head_bytes, 2 * rows * h * v),
            "attention": (att, att_bytes, att_flops),
        }
        rest = whole - proj - head - att
        total_bytes, total_flops = sum(p[1] for p in parts.values()), sum(p[2] for p in parts.values())
        table = [(name, *part) for name, part in parts.items()]
        table += [("rest", rest, 0, 0), ("whole step", whole, total_bytes, total_flops)]
        for name, ms, nbytes, flops in table:
            roof = max(nbytes / bandwidth, flops / peak) * 1e3
            frac = f"{roof / ms:8.2f}" if nbytes else f"{'':>8}"
            print(f"{rows:>5} {name:<12} {ms:>8.1f} {ms / whole:>6.2f} {nbytes / 1e6:>7.0f} {flops / 1e9:>6.2f} "
                  f"{roof:>11.1f} {frac}")  # fmt: skip


if __name__ == "__main__":
    main()
