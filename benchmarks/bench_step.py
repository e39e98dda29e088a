"""A GRPO step at a training config's shapes, phase by phase, against this CPU's measured limits.

For a config (default configs/memtrain.py:cpu) it runs `--warmup` GRPO steps (they compile) and then
`--steps` timed ones with the real data pipeline, sampler and learner (`Trainer.grpo_step`), and prints per step:

* prefill: the sampler's prefill programs; FLOPs of the distinct prompts' real tokens (2 x layer matmul
  parameters per token + causal attention + the head once), as a fraction of the float32 matmul peak;
* decode: the sampler's decode programs; per decode step every weight is read once plus the K/V slots in use,
  so its roofline time is max(bytes / bandwidth, 2 x params x rows / peak); printed as that roofline's fraction
  (1.0 = at the limit) and the bandwidth fraction alone;
* update: `Learner.update` over the step's sequences; FLOPs = forward 2 x (layer matmuls) x T of every token +
  the head on scored positions, backward 4 x (the trainable layers' matmuls) x T + 4 x head x scored
  (`train.trainable_layers` stops the backward pass there), a prompt shared by a group of G2 recall samples
  (`train.share_prompts`) counted once; its MFU;
* compile: tracing, lowering and compiling programs for shapes not seen before (JAX's /jax/core/compile/*
  duration events), wherever it happens: the sampler's programs compile before their timed calls, the
  learner's inside its update; it is taken out of update and host. A long run stops compiling once its length
  buckets are all seen, so "without compilation" is its steady state;
* host: the rest of the step (prompt building, decoding text, answer and entity extraction, probe drawing,
  credit, packing, transfers).

The matmul peak (best of jax, numpy and torch on [2048, 2048] float32) and the copy bandwidth (read + write)
are measured in the same process. `--against REF` runs the same measurement on a git worktree of REF (e.g. an
older commit) in a subprocess, one after the other, and prints both and their ratios; run nothing else meanwhile.

    python benchmarks/bench_step.py                                   # configs/memtrain.py:cpu, 3 timed steps
    python benchmarks/bench_step.py --config configs/memtrain.py:cpu_long --steps 2
    python benchmarks/bench_step.py --against 0914f9c                 # side by side with an older commit
    python benchmarks/bench_step.py --set data.loader.batch_size=4 --set agent.recall_group_size=8
    python benchmarks/bench_step.py --set init_from=runs/RUN          # a warmed-up policy: its updates are timed
    python benchmarks/bench_step.py --set-here sampling.lookup_sampled=True --against HEAD   # a switch of this tree

Run from a folder whose cache/ holds the prepared data (else the first step prepares it, untimed).
The base model earns no reward at the CPU shapes, so DAPO drops every group and its steps have no update
(update 0.0, MFU nan); `init_from` a warmed-up run times the update as well.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from common import copy_bandwidth, matmul_peaks

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class TimedSampler:
    """Wraps a Sampler: every call records its prefill / decode seconds, rows, distinct prompts and decode steps."""

    def __init__(self, sampler: Any):
        self._sampler = sampler
        sampler.record_timings = True
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sampler, name)

    def __call__(self, params, prompts, **kw):
        out = self._sampler(params, prompts, **kw)
        distinct = {tuple(int(t) for t in p) for p in prompts}
        lengths = np.asarray(out.lengths)
        self.calls.append(
            {
                **self._sampler.last_timings,
                "rows": len(prompts),
                "active_rows": int((np.asarray(kw.get("max_new_tokens", [1] * len(prompts))) > 0).sum()),
                "distinct": [len(p) for p in distinct],
                "steps": int(out.steps),
                "generated": int(lengths.sum()),
                "context": float(np.mean([len(p) for p in prompts])) + float(out.steps) / 2,
                "output": out,
            }
        )
        return out


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling, summed from jax.monitoring's duration events."""

    EVENTS = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    )

    def __init__(self):
        import jax

        self.total = 0.0  # all compilation seen
        self.inside = 0.0  # the part inside calls of functions wrapped by `within`
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name: str, seconds: float, **_: Any) -> None:
        if name in self.EVENTS:
            self.total += seconds

    def within(self, fn: Any) -> Any:
        """`fn`, adding the compilation seconds of each call to `inside`."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            before = self.total
            try:
                return fn(*args, **kwargs)
            finally:
                self.inside += self.total - before

        return timed


def _layer_matmuls(c: Any, layers: int) -> int:
    h, m, n, k, d = c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    return layers * (2 * h * n * d + 2 * h * k * d + 3 * h * m)


def _limits() -> tuple[float, float]:
    """(float32 matmul peak FLOP/s: the best of jax, numpy and torch on [2048, 2048]; copy bandwidth, bytes/s)."""
    return max(matmul_peaks().values()), copy_bandwidth(on_accelerator=False)


def measure(spec: str, overrides: dict[str, Any], warmup: int, steps: int) -> dict[str, Any]:
    """Runs the steps in this process; returns per-step phase figures and the limits."""
    import jax

    from memtrain_jax import sharding
    from memtrain_jax.config import apply_overrides, load_config
    from memtrain_jax.train import Trainer

    peak, bandwidth = _limits()
    config = load_config(spec)
    fixed = {
        "train.format_steps": 0,
        "train.eval_every": 0,
        "train.checkpoint_every": 0,
        "train.steps": warmup + steps,
        "compilation_cache": "",
    }
    config = apply_overrides(config, {**fixed, **overrides})
    workdir = tempfile.mkdtemp(prefix="bench_step_")
    trainer = Trainer(config, workdir, log=lambda *_: None)
    setup = trainer.setup
    timed = TimedSampler(setup.sampler_policy.sampler)
    setup.sampler_policy.sampler = timed
    model = setup.policy.model_config
    weights = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(setup.policy.params))
    itemsize = np.dtype(model.compute_dtype).itemsize
    kv_slot = 2 * model.num_layers * model.num_kv_heads * model.head_dim * itemsize
    trainable = int(config.train.trainable_layers) or model.num_layers
    head = model.hidden_size * model.vocab_size

    clock = CompileClock()
    for name in ("update", "score"):  # the learner compiles inside the timed update
        setattr(trainer.learner, name, clock.within(getattr(trainer.learner, name)))
    iterator = iter(setup.dataset(num_slots=trainer.train_slots))
    state = trainer.initial_state()
    rows = []
    for step in range(warmup + steps):
        batch = sharding.gather_host_rows(next(iterator))
        timed.calls.clear()
        compiled, clock.inside = clock.total, 0.0
        start = time.perf_counter()
        state, metrics, result = trainer.grpo_step(state, batch, step)
        step_s = time.perf_counter() - start
        compile_s = clock.total - compiled
        if step < warmup:
            continue
        calls = timed.calls
        prefill_s = sum(c.get("prefill_s", 0.0) for c in calls)
        decode_s = sum(c.get("decode_s", 0.0) for c in calls)
        attention = lambda p: model.num_layers * 2 * model.num_heads * model.head_dim * p * (p + 1)
        per_token = 2 * _layer_matmuls(model, model.num_layers)
        prefill_flops = sum(per_token * p + attention(p) + 2 * head for c in calls for p in c["distinct"])
        decode_roofline = sum(
            c["steps"] * max((weights + c["active_rows"] * c["context"] * kv_slot) / bandwidth,
                             2 * _layer_matmuls(model, model.num_layers) * c["active_rows"] / peak)
            for c in calls
        )  # fmt: skip
        decode_bytes = sum(c["steps"] * (weights + c["active_rows"] * c["context"] * kv_slot) for c in calls)
        update_s = float(metrics.get("update_s") or 0.0) - clock.inside
        tokens = scored = 0
        if result is not None and update_s:
            from memtrain_jax.agent import assign_credit

            sequences, _ = assign_credit(result, setup.agent)
            tokens = sum(len(p) + len(r) for p, r in zip(sequences.prompts, sequences.responses, strict=True))
            scored = sequences.num_response_tokens
            if getattr(trainer.train_config, "share_prompts", False):  # a shared prompt is computed once a group
                from memtrain_jax.train.batching import shared_prompt_groups

                k = int(setup.agent.recall_group_size)
                for group in shared_prompt_groups(sequences, range(len(sequences)), k) if k > 1 else []:
                    tokens -= (k - 1) * (len(sequences.prompts[group[0]]) - 1)
        update_flops = (
            2 * _layer_matmuls(model, model.num_layers) * tokens
            + 4 * _layer_matmuls(model, trainable) * tokens
            + 6 * head * scored
        )
        rows.append(
            {
                "step_s": step_s,
                "prefill_s": prefill_s,
                "prefill_frac": prefill_flops / max(prefill_s, 1e-9) / peak,
                "decode_s": decode_s,
                "decode_roofline_frac": decode_roofline / max(decode_s, 1e-9),
                "decode_bw_frac": decode_bytes / max(decode_s, 1e-9) / bandwidth,
                "update_s": update_s,
                "update_mfu": update_flops / max(update_s, 1e-9) / peak if update_s else float("nan"),
                "compile_s": compile_s,
                "steady_s": step_s - compile_s,
                "host_s": step_s - prefill_s - decode_s - update_s - compile_s,
                "calls": len(calls),
                "per_call": [
                    {key: c.get(key, 0) for key in ("rows", "steps", "generated", "prefill_s", "decode_s")}
                    | {"distinct": len(c["distinct"])}
                    for c in calls
                ],
                "generated": sum(c["generated"] for c in calls),
                "sequences": float(metrics.get("sequences") or 0),
                "shared": float(metrics.get("shared_prompt_sequences") or 0),
            }
        )
    compilations = trainer.learner.compile_count + setup.sampler.compile_count
    trainer.close()
    return {"peak": peak, "bandwidth": bandwidth, "rows": rows, "compilations": compilations}


def summary(result: dict[str, Any]) -> dict[str, float]:
    rows = result["rows"]
    mean = lambda k: float(np.nanmean([r[k] for r in rows]))
    out = {k: mean(k) for k in rows[0] if k != "per_call"}
    if "steady_s" not in out:  # a commit measured before compilation was timed apart: it is in host and update
        out["compile_s"] = out["steady_s"] = float("nan")
    steady = out["steady_s"] if np.isfinite(out["steady_s"]) else out["step_s"]
    out["host_frac"] = out["host_s"] / steady
    out["steps_per_hour"] = 3600.0 / out["step_s"]
    out["steady_per_hour"] = 3600.0 / out["steady_s"]
    return out


def print_table(labels: list[str], results: list[dict[str, Any]]) -> None:
    sums = [summary(r) for r in results]
    print()
    for label, r in zip(labels, results, strict=True):
        print(
            f"{label}: matmul peak {r['peak'] / 1e9:.0f} GFLOP/s, copy bandwidth {r['bandwidth'] / 1e9:.1f} GB/s, "
            f"{len(r['rows'])} timed steps, {r['compilations']} compilations in all"
        )
    lines = [
        ("step (s)", "step_s", "{:.1f}"),
        ("GRPO steps per hour", "steps_per_hour", "{:.1f}"),
        ("compile (s)", "compile_s", "{:.1f}"),
        ("step without compile (s)", "steady_s", "{:.1f}"),
        ("  GRPO steps per hour", "steady_per_hour", "{:.1f}"),
        ("prefill (s)", "prefill_s", "{:.1f}"),
        ("  fraction of matmul peak", "prefill_frac", "{:.2f}"),
        ("decode (s)", "decode_s", "{:.1f}"),
        ("  fraction of roofline", "decode_roofline_frac", "{:.2f}"),
        ("  fraction of bandwidth", "decode_bw_frac", "{:.2f}"),
        ("update (s)", "update_s", "{:.1f}"),
        ("  MFU", "update_mfu", "{:.2f}"),
        ("host (s)", "host_s", "{:.1f}"),
        ("  share of the step", "host_frac", "{:.2f}"),  # of the step without compilation
        ("sampler calls", "calls", "{:.0f}"),
        ("generated tokens", "generated", "{:.0f}"),
        ("trained sequences", "sequences", "{:.0f}"),
        ("  with a shared prompt", "shared", "{:.0f}"),
    ]
    width = max(12, *(len(label) for label in labels))
    print(
        f"{'per step (mean)':<28}"
        + "".join(f"{label:>{width + 2}}" for label in labels)
        + (f"{'ratio':>10}" if len(labels) == 2 else "")
    )
    for name, key, fmt in lines:
        cells = "".join(f"{fmt.format(s[key]):>{width + 2}}" for s in sums)
        ratio = ""
        if len(sums) == 2 and sums[1][key]:
            ratio = f"{sums[0][key] / sums[1][key]:>9.2f}x"
        print(f"{name:<28}{cells}{ratio}")


def print_calls(labels: list[str], results: list[dict[str, Any]]) -> None:
    """Each timed step's sampler calls: rows, distinct prompts, model steps, generated tokens, seconds."""
    for label, result in zip(labels, results, strict=True):
        print(f"\n{label}: sampler calls of each timed step")
        print(f"{'step':>4} {'rows':>5} {'distinct':>8} {'model steps':>11} {'tokens':>7} {'tokens/step':>11} "
              f"{'prefill s':>9} {'decode s':>9} {'ms/step':>8}")  # fmt: skip
        for i, row in enumerate(result["rows"]):
            for c in row.get("per_call", []):
                per = c["generated"] / max(c["steps"], 1)
                ms = 1e3 * c["decode_s"] / max(c["steps"], 1)
                print(f"{i:>4} {c['rows']:>5} {c['distinct']:>8} {c['steps']:>11} {c['generated']:>7} {per:>11.1f} "
                      f"{c['prefill_s']:>9.2f} {c['decode_s']:>9.2f} {ms:>8.0f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/memtrain.py:cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--warmup", type=int, default=1, help="untimed GRPO steps first (they compile)")
    parser.add_argument("--steps", type=int, default=3, help="timed GRPO steps")
    parser.add_argument("--against", default="", help="a git ref measured the same way, in a worktree")
    parser.add_argument("--set-here", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for this tree only (a setting the other tree lacks or keeps)")  # fmt: skip
    parser.add_argument("--json", default="", help="(internal) write this process's measurement here")
    parser.add_argument("--calls", action="store_true", help="also print each sampler call of the timed steps")
    args = parser.parse_args(argv)
    overrides = dict(_split(s) for s in args.set)
    here = {**overrides, **dict(_split(s) for s in args.set_here)}
    if args.json:  # a worker: measure and hand the figures back
        result = measure(args.config, overrides, args.warmup, args.steps)
        with open(args.json, "w") as f:
            json.dump(result, f)
        return
    labels, results = ["this tree"], [measure(args.config, here, args.warmup, args.steps)]
    if args.against:  # this tree's figures first: a failure of the other tree's run loses nothing
        print_table(labels, results)
        sys.stdout.flush()
        tree = os.path.join(tempfile.gettempdir(), f"bench_step_{args.against}")
        if not os.path.isdir(tree):
            subprocess.run(["git", "-C", REPO, "worktree", "add", "-f", "--detach", tree, args.against], check=True)
        out = os.path.join(tempfile.mkdtemp(), "result.json")
        # The other tree measures with its own config file (a config of this repository is mapped into it).
        path, sep, variant = args.config.partition(":")
        path = os.path.relpath(os.path.abspath(path), REPO) if os.path.abspath(path).startswith(REPO + os.sep) else path
        config = (path if os.path.isabs(path) else os.path.join(tree, path)) + sep + variant
        sets = [a for s in args.set for a in ("--set", s)]
        command = [sys.executable, os.path.abspath(__file__), "--config", config, "--json", out,
                   "--warmup", str(args.warmup), "--steps", str(args.steps), *sets]  # fmt: skip
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": tree})
        with open(out) as f:
            results.append(json.load(f))
        labels.append(args.against)
    if args.calls:
        print_calls(labels, results)
    print(f"config {args.config} {' '.join(args.set)}; {args.warmup} warm-up + {args.steps} timed GRPO steps")
    if args.set_here:
        print(f"this tree only: {' '.join(args.set_here)}")
    print_table(labels, results)


def _split(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--set and --set-here need KEY=VALUE, got {text!r}")
    return key, _value(value)


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()  # as `memtrain` does (memtrain_jax/host_memory.py)
    main()
