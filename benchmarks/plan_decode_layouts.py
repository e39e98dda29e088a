"""A pod preset's rollout decode programs compiled for its TPU slice (libtpu, on this CPU machine) with scanned
and with unrolled layers: temporaries, arguments, outputs and aliased bytes per chip, and compile seconds.

    python benchmarks/plan_decode_layouts.py qwen3-4b,v5p-64 [--kinds memory,answer,recall]

Scanned layers carry the stacked KV cache through the scan and write it in place, so their decode temporaries
should be at most those of unrolled layers (the criterion of `memtrain plan` for every preset).
"""

from __future__ import annotations

import argparse
import math
import time

from memtrain_jax.config import load_config
from memtrain_jax.plan import compile_or_refusal, parse_slice, rollout_sampler, run_shapes, topology_devices

GiB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="MODEL,SLICE of configs/pod.py, e.g. qwen3-4b,v5p-64")
    parser.add_argument("--kinds", default="memory", help="rollout turns to compile: memory, answer, recall")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    model, slice_name = args.preset.split(",")
    devices = topology_devices(parse_slice(slice_name))
    temps: dict[tuple[str, bool], float] = {}
    print(f"{'decode program (per chip, GiB)':44s} {'layers':>8s} {'temps':>7s} {'args':>7s} {'outputs':>7s} "
          f"{'aliased':>7s} {'compile s':>9s}")  # fmt: skip
    for scan in (True, False):
        config = load_config(f"pod.py:{model},{slice_name}")
        config.model.scan_layers = scan
        sampler = rollout_sampler(config, devices)
        for call in run_shapes(config, sampler.batch_multiple).calls:
            if call.kind not in kinds:
                continue
            start = time.perf_counter()
            lowered = sampler.lower_programs(call.rows, call.distinct, call.prompt, call.new)["decode"]
            name = f"{call.kind} B={call.rows} U={call.distinct} P={call.prompt} N={call.new}"
            compiled, refusal = compile_or_refusal(lowered)
            if refusal:  # the compiler's verdict: the program does not fit a chip
                print(f"{name:44s} {'scanned' if scan else 'unrolled':>8s} refused: {refusal[:160]}")
                temps[call.kind, scan] = float("inf")
                continue
            memory = compiled.memory_analysis()
            seconds = time.perf_counter() - start
            temps[call.kind, scan] = memory.temp_size_in_bytes
            print(
                f"{name:44s} {'scanned' if scan else 'unrolled':>8s} {memory.temp_size_in_bytes / GiB:7.2f} "
                f"{memory.argument_size_in_bytes / GiB:7.2f} {memory.output_size_in_bytes / GiB:7.2f} "
                f"{memory.alias_size_in_bytes / GiB:7.2f} {seconds:9.1f}",
                flush=True,
            )
    for kind in kinds:
        scanned, unrolled = temps.get((kind, True)), temps.get((kind, False))
        if scanned is None or unrolled is None:
            continue
        if math.isinf(unrolled) or math.isinf(scanned):
            refused = " and ".join(n for n, t in (("scanned", scanned), ("unrolled", unrolled)) if math.isinf(t))
            print(f"{kind}: scanned / unrolled temporaries: {refused} refused by the compiler")
        else:
            print(f"{kind}: scanned / unrolled temporaries = {scanned / unrolled:.2f}")


if __name__ == "__main__":
    main()
