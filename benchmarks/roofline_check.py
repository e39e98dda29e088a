"""The analytic roofline of `memtrain plan` (memtrain_jax/plan/cost.py) against our programs timed on a chip.

`memtrain plan` predicts a GRPO step as the sum of its programs' rooflines, max(FLOPs / peak, bytes / bandwidth),
with the FLOPs and HBM bytes of plan/cost.py. This script runs our prefill, decode and train programs on this
host's first accelerator at chosen shapes, measures the chip's bfloat16 matmul peak and copy bandwidth in the same
run, and prints each program's measured time beside its roofline. measured / roofline is the factor by which a
prediction (which assumes 1.0) is optimistic for that program on that chip.

    python benchmarks/roofline_check.py                            # llama-3.2-1b, bfloat16, random weights
    python benchmarks/roofline_check.py --model qwen2.5-0.5b --rows 16,64 --prompt 1024 --new 128

Programs (one device; random weights; no stop tokens, so decode runs all its steps):
  prefill [B, P]       the sampler's prefill of B distinct prompts of P tokens
  decode [B, P, N]     the sampler's decode loop: N steps of B rows after P cached positions
  train [M, L]         jax.value_and_grad of the summed token log-probs of M rows of L tokens (full remat,
                       every layer trained): the learner's forward and backward without the GRPO weights
Each is timed `--repeats` times after a call that compiles; the fastest is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, copy_bandwidth

from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.model.logprobs import token_logprobs
from memtrain_jax.model.presets import preset_values
from memtrain_jax.plan import cost
from memtrain_jax.sampler import Sampler


def chip_limits(n: int = 8192, repeats: int = 5) -> tuple[float, float]:
    """(bfloat16 matmul FLOP/s on [n, n] x [n, n]; copy bandwidth in bytes/s, read + write)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    mm = jax.jit(lambda x: x @ x)
    return 2 * n**3 / best_time(lambda: mm(a).block_until_ready(), repeats), copy_bandwidth(on_accelerator=True)


def model_config(name: str, attention: str) -> ModelConfig:
    config = ModelConfig.from_dict(preset_values(name))
    return dataclasses.replace(config, param_dtype="bfloat16", dtype="bfloat16", remat="full", attention=attention)


def time_rollout(model: ModelConfig, params, rows: int, prompt: int, new: int, repeats: int) -> dict[str, float]:
    """The sampler's prefill and decode seconds (fastest of `repeats`) for `rows` distinct prompts."""
    sampler = Sampler(model, record_timings=True, share_prefixes=False)
    rng = np.random.default_rng(rows)
    prompts = [list(rng.integers(1, model.vocab_size, prompt)) for _ in range(rows)]
    best = {"prefill_s": float("inf"), "decode_s": float("inf")}
    for i in range(repeats + 1):
        out = sampler(params, prompts, max_new_tokens=new, temperature=0.0)
        if i:  # the first call compiles
            best = {k: min(best[k], sampler.last_timings[k]) for k in best}
    (padded,) = [int(name.split(" P=")[1].split()[0]) for name in sampler.compile_seconds if name.startswith("prefill")]
    return {**best, "steps": int(out.steps), "prompt": padded}


def time_train(model: ModelConfig, params, rows: int, length: int, repeats: int) -> float:
    tokens = jax.random.randint(jax.random.key(1), (rows, length), 1, model.vocab_size)

    @jax.jit
    def step(p, t):
        return jax.value_and_grad(lambda q: token_logprobs(model, q, t).sum())(p)

    return best_time(lambda: jax.block_until_ready(step(params, tokens)), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-3.2-1b", help="a model preset (memtrain_jax.model.presets)")
    parser.add_argument("--attention", default="auto", help="attention backend (auto: cudnn on GPU, splash on TPU)")
    parser.add_argument("--rows", default="16,128", help="rollout rows B (distinct prompts), comma-separated")
    parser.add_argument("--prompt", type=int, default=2048, help="prompt tokens P")
    parser.add_argument("--new", type=int, default=256, help="decode steps N")
    parser.add_argument("--train", default="8x2048,4x4096", help="train micro-batches MxL, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=8192, help="the peak's square matmul size")  # small on a CPU
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    args = parser.parse_args()

    device = jax.devices()[0]
    peak, bandwidth = chip_limits(args.matmul)
    print(f"device {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"measured: bfloat16 matmul peak {peak / 1e12:.0f} TFLOP/s, copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    model = model_config(args.model, args.attention)
    params = init_params(model, jax.random.key(0))
    # splash and cuDNN skip the masked half of causal attention; the reference and blocked kernels compute it
    causal = args.attention in ("auto", "splash", "cudnn")
    print(f"model {args.model}: {model.num_params() / 1e9:.2f} B parameters, bfloat16, attention {args.attention}")

    rows_out = []

    def report(name: str, measured: float, c: cost.Cost) -> None:
        roofline = c.seconds(peak, bandwidth)
        bound = "compute" if c.flops / peak >= c.bytes / bandwidth else "memory"
        row = dict(program=name, measured_s=measured, roofline_s=roofline, ratio=measured / roofline,
                   tflop=c.flops / 1e12, gib=c.bytes / 2**30, bound=bound)  # fmt: skip
        rows_out.append(row)
        print(f"{name:28s} {measured:10.4f} {roofline:10.4f} {measured / roofline:7.2f} {c.flops / 1e12:9.2f} "
              f"{c.bytes / 2**30:8.2f}  {bound}", flush=True)  # fmt: skip

    print(f"\n{'program':28s} {'measured s':>10s} {'roofline s':>10s} {'ratio':>7s} {'TFLOP':>9s} {'GiB':>8s}  bound")
    for rows in (int(r) for r in args.rows.split(",") if r):
        try:
            t = time_rollout(model, params, rows, args.prompt, args.new, args.repeats)
        except Exception as error:  # report the other programs
            print(f"rollout B={rows}: {type(error).__name__}: {error}")
            continue
        p, n = t["prompt"], t["steps"]  # as the sampler padded them
        report(f"prefill B={rows} P={p}", t["prefill_s"], cost.prefill_cost(model, rows, p, causal=causal))
        report(f"decode B={rows} P={p} N={n}", t["decode_s"], cost.decode_cost(model, rows, p, n))
    for shape in (s for s in args.train.split(",") if s):
        m, length = (int(v) for v in shape.split("x"))
        try:
            seconds = time_train(model, params, m, length, args.repeats)
        except Exception as error:
            print(f"train {shape}: {type(error).__name__}: {error}")
            continue
        report(f"train M={m} L={length}", seconds,
               cost.train_cost(model, m, length, scored=length - 1, causal=causal))  # fmt: skip
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(
                {"device": device.device_kind, "peak": peak, "bandwidth": bandwidth, "rows": rows_out}, f, indent=1
            )


if __name__ == "__main__":
    main()
