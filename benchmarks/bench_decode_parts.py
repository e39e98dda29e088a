"""Where a decode step's time goes: the whole sampled decode loop against its parts, each timed on its own.

SmolLM2-135M's shapes with random weights, `--rows` rows of `--prompt`-token prompts (each row its own prompt, as
in the memory turns of a GRPO step), `--steps` tokens sampled at T = 0.7. For each row count it prints the loop's
milliseconds per model step and the parts a step is made of, each with the bytes it must read and the FLOPs it
must do:

* projections: the 30 layers' q, k, v, o, gate, up and down products on [rows, in] inputs, layer after layer (each
  layer's input is the last one's output, as in the model), with the model's kernel arrays;
* head: the tied [V, H] embedding contracted with [rows, H] as `Transformer` does (no transpose);
* attention: `attention._dense_pass` (the decode path of the blocked backend) over each of the 30 layers' own K/V
  buffers of prompt + steps slots, layer after layer;
* the rest: the loop minus the three (norms, rotary, cache writes, sampling, loop control); it can come out
  negative where the loop overlaps parts on the CPU's cores or a part runs slower alone.

Each part's roofline is the larger of its bytes over the copy bandwidth and its FLOPs over the matmul peak, both
measured in this process the way `bench_step.py` measures them (the best [2048, 2048] float32 matmul of jax, numpy
and torch; a read + write copy); the fraction printed is roofline / measured (1.0 = at the limit). The whole step's
roofline is the larger of all parts' bytes over the bandwidth and all their FLOPs over the peak, as `bench_step.py`
counts a decode step: it assumes compute-bound and bandwidth-bound parts overlap perfectly, so it is lower than the
sum of the parts' rooflines and its fraction does not compare with theirs. Times are the fastest of `--runs` calls.

    python benchmarks/bench_decode_parts.py --rows 8,16,64,128
    python benchmarks/bench_decode_parts.py --rows 128 --prompt 256 --steps 24   # a recall call's shape
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, copy_bandwidth, layer_matmul_params, matmul_peaks

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

    # the first token comes from the prefill's logits: the loop runs steps - 1 model steps
    return best_time(lambda: run(params, cache, logits).block_until_ready(), runs) / (steps - 1) * 1e3


def projections_ms(params, rows: int, runs: int) -> tuple[float, int, int]:
    """(ms, weight bytes, FLOPs) of every layer's projections, layer after layer, on [rows, in] inputs."""
    layers = [params[name] for name in sorted(params) if name.startswith("layers_")]
    kernels = [[layer[a][b]["kernel"] for a, b in PROJECTIONS] for layer in layers]
    hidden = kernels[0][-1].shape[-1]  # down_proj's output
    # as matrices [in, out]: q, k, v [H, N, D] -> [H, N * D]; o [N, D, H] -> [N * D, H]
    as_matrix = lambda w: w.reshape(hidden, -1) if w.ndim == 3 and w.shape[0] == hidden else w.reshape(-1, w.shape[-1])
    kernels = [[as_matrix(w) for w in layer] for layer in kernels]

    @jax.jit
    def run(kernels, x):
        for q, k, v, o, gate, up, down in kernels:  # a layer without its norms and attention
            x = x + 0.1 * ((x @ q) @ o) + 1e-3 * (jnp.mean(x @ k) + jnp.mean(x @ v))
            x = x + 0.1 * ((jax.nn.silu(x @ gate) * (x @ up)) @ down)
        return x

    x = jax.random.normal(jax.random.key(5), (rows, hidden), jnp.float32)
    ms = best_time(lambda: run(kernels, x).block_until_ready(), runs) * 1e3
    leaves = jax.tree.leaves(kernels)
    return ms, sum(w.nbytes for w in leaves), sum(2 * rows * w.size for w in leaves)


def head_ms(params, rows: int, runs: int) -> tuple[float, int, int]:
    """(ms, bytes, FLOPs) of the tied head on [rows, H] inputs."""
    embedding = params["embedder"]["embedding"]
    x = jax.random.normal(jax.random.key(2), (rows, embedding.shape[1]), embedding.dtype)
    head = jax.jit(lambda x, e: jnp.einsum("bh,vh->bv", x, e, preferred_element_type=jnp.float32))
    ms = best_time(lambda: head(x, embedding).block_until_ready(), runs) * 1e3
    return ms, embedding.nbytes, 2 * rows * embedding.size


def attention_ms(config: ModelConfig, rows: int, slots: int, runs: int) -> tuple[float, int, int]:
    """(ms, K/V bytes, FLOPs) of one decode query per row over every layer's own [rows, K, slots, D] buffers."""
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
    flops = 4 * config.num_layers * rows * config.num_heads * slots * d  # scores and weighted values
    return ms, sum(k.nbytes + v.nbytes for k, v in zip(ks, vs, strict=True)), flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="8,16,64,128")
    parser.add_argument(
        "--prompt", type=int, default=320, help="prompt tokens a row (memory turns at the protocol: 250-333)"
    )
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
    for rows in (int(r) for r in args.rows.split(",")):
        whole = loop_ms(config, params, rows, args.prompt, args.steps, args.runs)
        proj = projections_ms(params, rows, args.runs)
        assert proj[2] == 2 * rows * layer_matmul_params(config), "the projections timed are not the model's"
        parts = {
            "projections": proj,
            "head": head_ms(params, rows, args.runs),
            "attention": attention_ms(config, rows, slots, args.runs),
        }
        rest = whole - sum(p[0] for p in parts.values())
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
