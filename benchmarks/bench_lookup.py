"""Greedy decoding with prompt-lookup drafts (`sampling.lookup_tokens`) against lockstep greedy decoding.

Two parts, each side by side in one process:

* step cost by rows: SmolLM2-135M's shapes with random weights, 8 shared 256-token prompts, 64 greedy tokens a
  row; the decode's milliseconds per model step with k = 0 (lockstep) and k = `--drafts` (each step feeds
  B x (k + 1) positions; Buckets.lookup_max_rows is lifted for it), and their ratio: the tokens a lookup
  step must emit to break even at that many rows.
  A random model's greedy output loops, so its drafts are mostly accepted; the per-step cost does not depend on it.
* `--run RUN@STEP` (a MemTrain checkpoint; needs the data caches of `--config` under the working directory):
  greedy evaluation rollouts of `--episodes` held-out episodes (at most LOOKUP_MAX_ROWS = 16, so that the memory
  turns are eligible; the final and recall answers, of short budgets, decode in lockstep either way),
  with drafts and without, twice each in alternation (the first pair compiles). Prints each sampler call's rows,
  its tokens' equality, generated tokens and model steps, and each evaluation's prefill, decode and wall seconds.

    python benchmarks/bench_lookup.py                                   # step cost by rows
    cd RUN_FOLDER && python /path/to/benchmarks/bench_lookup.py --rows --run /tmp/runs/W0@40 \\
        --config configs/memtrain.py:cpu_long,g2=8 --set data.loader.batch_size=4 \\
        --set train.format_memory=latest_first --set data.probes.mode=latest --set sampling.max_rows=128
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import jax
import numpy as np
from bench_step import TimedSampler, _split

from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.model.presets import preset_values
from memtrain_jax.sampler import Buckets, Sampler


def step_cost(drafts: int, rows: list[int]) -> None:
    config = ModelConfig(**preset_values("smollm2-135m"))
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    distinct = [rng.integers(1, 1000, 256).tolist() for _ in range(8)]
    print(f"SmolLM2-135M shapes, random weights; 256-token prompts, 64 greedy tokens a row; k = {drafts}")
    print(f"(a Sampler drafts for greedy calls of at most {Buckets().lookup_max_rows} rows; lifted here)")
    print(f"{'rows':>5} {'lockstep ms/step':>17} {'lookup ms/step':>15} {'ratio':>6} {'lookup steps':>13}")
    for b in rows:
        prompts = [distinct[i % len(distinct)] for i in range(b)]
        per_step, steps = {}, {}
        for k in (0, drafts):
            buckets = Buckets(length_block=64, compact_rows=0, lookup_tokens=k, lookup_max_rows=max(rows))
            sampler = Sampler(config, buckets=buckets)
            sampler.record_timings = True
            best = float("inf")
            for _ in range(3):  # the first compiles
                out = sampler(params, prompts, max_new_tokens=64, temperature=0.0)
                best = min(best, sampler.last_timings["decode_s"] / out.steps)
            per_step[k], steps[k] = best, out.steps
        ratio = per_step[drafts] / per_step[0]
        print(f"{b:>5} {per_step[0] * 1e3:>17.0f} {per_step[drafts] * 1e3:>15.0f} {ratio:>5.2f}x {steps[drafts]:>13}")


def rollouts(spec: str, run: str, sets: list[str], episodes: int, drafts: int) -> None:
    from memtrain_jax.config import apply_overrides, load_config
    from memtrain_jax.train import Trainer

    overrides = dict(_split(s) for s in sets)
    fixed = {"init_from": run, "train.format_steps": 0, "train.eval_episodes": episodes, "compilation_cache": ""}
    config = apply_overrides(load_config(spec), {**overrides, **fixed})
    trainer = Trainer(config, tempfile.mkdtemp(prefix="bench_lookup_"), log=lambda *_: None)
    sampler = trainer.eval_policy.sampler
    recorder = trainer.eval_policy.sampler = TimedSampler(sampler)  # keeps each call's timings and output
    params = trainer.initial_state().params
    runs: dict[int, list] = {}
    for k in (drafts, 0, drafts, 0):  # alternated; the first pair compiles
        sampler.buckets = dataclasses.replace(sampler.buckets, lookup_tokens=k)
        recorder.calls.clear()
        start = time.perf_counter()
        items = trainer.evaluate(params)["items"]
        wall = time.perf_counter() - start
        runs.setdefault(k, []).append((wall, list(recorder.calls), items))
    (wall_k, calls_k, items_k), (wall_0, calls_0, items_0) = runs[drafts][-1], runs[0][-1]
    print(f"{run}: greedy evaluation of {episodes} held-out episodes, k = {drafts} against lockstep (second runs)")
    header = ("rows", 5), ("tokens equal", 13), ("tokens", 7), ("model steps", 12), ("lockstep", 9), ("decode s", 9)
    print(" ".join(f"{name:>{width}}" for name, width in header) + f" {'lockstep':>9}")
    for ta, tb in zip(calls_k, calls_0, strict=True):
        rows, a, b = ta["rows"], ta["output"], tb["output"]
        same = a.tokens.shape == b.tokens.shape
        equal = same and bool((a.tokens == b.tokens).all() and (a.lengths == b.lengths).all())
        print(
            f"{rows:>5} {str(equal):>13} {int(a.lengths.sum()):>7} {a.steps:>12} {b.steps:>9} "
            f"{ta['decode_s']:>9.1f} {tb['decode_s']:>9.1f}"
        )
    total = lambda calls, key: sum(t.get(key, 0.0) for t in calls)
    print(f"items equal: {items_k == items_0}")
    for name, calls, wall in (("lookup", calls_k, wall_k), ("lockstep", calls_0, wall_0)):
        prefill, decode = total(calls, "prefill_s"), total(calls, "decode_s")
        print(f"{name:>9}: prefill {prefill:.1f} s, decode {decode:.1f} s, evaluation {wall:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drafts", type=int, default=4, help="k, draft tokens a step")
    parser.add_argument("--rows", nargs="*", type=int, default=[8, 16, 32, 64, 128], help="step cost at these rows")
    parser.add_argument("--run", default="", help="RUN@STEP: also compare greedy evaluation rollouts of it")
    parser.add_argument("--config", default="configs/memtrain.py:cpu_long,g2=8")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--episodes", type=int, default=16, help="held-out episodes (<= 16: rows that draft)")
    args = parser.parse_args()
    if args.rows:
        step_cost(args.drafts, args.rows)
    if args.run:
        rollouts(args.config, args.run, args.set, args.episodes, args.drafts)


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()  # as `memtrain` does (memtrain_jax/host_memory.py)
    main()
