"""Prefill in parts (`sampling.prefill_parts`) against one prefill a call, at a GRPO step's prompt shapes.

SmolLM2-135M's shapes with random weights (the prefill's cost does not depend on the weights), 64-token length
blocks as in the CPU variants. The workload is the distinct prompts of each sampler call of one GRPO step of the
many-probes arm (`cpu_long,g2=8,recall_only,in_memory,greedy_memory,g1=8`, 8 documents a step, from W0@40; recorded
by wrapping `Sampler.__call__` in bench_step): three memory turns of 8 rows, one final-answer call of 64 rows and
four recall calls of 128 rows, whose 5-8 distinct prompts are 124-333 tokens long. `--calls FILE` takes another
(a JSON line per call with its distinct prompt lengths under "lens").

Each call is prefilled with every `--parts` setting in turn, three times each (the first compiles); the best of the
last two counts. Printed per call and in total: the slots each setting computes (its parts' batch buckets x length
buckets), its prefill milliseconds (the prefill programs and, with parts, the empty prefix and the placing copies),
and the real tokens' FLOP/s as a fraction of the float32 matmul peak measured in the same process.

    python benchmarks/bench_prefill_parts.py                 # parts 1 and 4
    python benchmarks/bench_prefill_parts.py --parts 1,2,4
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
from common import layer_matmul_params, matmul_peaks

from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.model.presets import preset_values
from memtrain_jax.sampler import Buckets, Sampler

STEP_CALLS = [  # distinct prompt lengths of each sampler call of one step of the many-probes arm (see above)
    [241] * 8,
    [297, 300, 301, 301, 301, 301, 301, 333],
    [274, 288, 296, 301, 301, 301, 301, 333],
    [124, 148, 157, 171, 179, 184, 184, 208],
    [226, 229, 230, 230, 231, 232, 233, 264],
    [198, 201, 231, 231, 264, 265],
    [226, 228, 231, 233, 236, 236],
    [229, 230, 232, 257, 257],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1,4", help="prefill_parts settings, comma separated")
    parser.add_argument("--calls", default="", help="a JSON-lines file of calls' distinct prompt lengths ('lens')")
    args = parser.parse_args()
    settings = [int(x) for x in args.parts.split(",")]
    calls = STEP_CALLS
    if args.calls:
        with open(args.calls, encoding="utf-8") as f:
            calls = [json.loads(line)["lens"] for line in f if line.strip()]

    peak = max(matmul_peaks().values())
    config = ModelConfig(**preset_values("smollm2-135m"))
    params = init_params(config, jax.random.key(0))
    per_token = 2 * layer_matmul_params(config)
    attention = lambda p: config.num_layers * 2 * config.num_heads * config.head_dim * p * (p + 1)
    head = 2 * config.hidden_size * config.vocab_size
    rng = np.random.default_rng(0)
    samplers = {k: Sampler(config, buckets=Buckets(length_block=64, compact_rows=0, prefill_parts=k)) for k in settings}
    for sampler in samplers.values():
        sampler.record_timings = True
        params = sampler.place_params(params)

    print(f"SmolLM2-135M shapes, random weights; matmul peak {peak / 1e9:.0f} GFLOP/s (measured in this process)")
    head_line = f"{'call':>4} {'prompts':>7} {'tokens':>7}"
    for k in settings:
        head_line += f" {f'slots@{k}':>9} {f'ms@{k}':>8} {f'peak@{k}':>7}"
    print(head_line)
    totals = {k: [0, 0.0] for k in settings}
    total_tokens = total_flops = 0
    for i, lengths in enumerate(calls):
        prompts = [rng.integers(1, config.vocab_size, n).tolist() for n in lengths]
        flops = sum(per_token * n + attention(n) + head for n in lengths)
        line = f"{i:>4} {len(lengths):>7} {sum(lengths):>7}"
        for k, sampler in samplers.items():
            parts = sampler.prepare(prompts, 1)["parts"]
            slots = int((parts[:, 1] * parts[:, 2]).sum())
            seconds = []
            for _ in range(3):
                sampler(params, prompts, max_new_tokens=1)
                seconds.append(sampler.last_timings["prefill_s"])
            best = min(seconds[1:])
            totals[k][0] += slots
            totals[k][1] += best
            line += f" {slots:>9} {best * 1e3:>8.0f} {flops / best / peak:>7.2f}"
        total_tokens += sum(lengths)
        total_flops += flops
        print(line)
    line = f"{'all':>4} {sum(map(len, calls)):>7} {total_tokens:>7}"
    for k in settings:
        slots, seconds = totals[k]
        line += f" {slots:>9} {seconds * 1e3:>8.0f} {total_flops / seconds / peak:>7.2f}"
    print(line)
    base = settings[0]
    for k in settings[1:]:
        print(f"parts {k} against {base}: {totals[base][1] / totals[k][1]:.2f}x faster, "
              f"{totals[k][0] / totals[base][0]:.2f} of the slots")  # fmt: skip


if __name__ == "__main__":
    main()
