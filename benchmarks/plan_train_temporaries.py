"""The train step (`accumulate`: one micro-batch's forward and backward) of the pod presets, compiled for their TPU
slices (libtpu, on this CPU machine): the compiler's per-chip temporaries beside the closed-form estimate's
(memtrain_jax.plan.estimate: activations, the log-softmax block and the fresh gradients).

    python benchmarks/plan_train_temporaries.py                      # every configs/pod.py PAPER_PRESETS pair
    python benchmarks/plan_train_temporaries.py qwen3-4b,v5p-64 llama-3.1-8b,v4-8

tests/test_plan.py asserts the ratio within [0.75, 1.25] for every paper preset.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import jax

from memtrain_jax.config import load_config
from memtrain_jax.plan import parse_slice, train_temporaries

GiB = 2**30


def _paper_presets() -> list[str]:
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "pod.py")
    spec = importlib.util.spec_from_file_location("pod", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [f"{model},{slice_name}" for model, slice_name in module.PAPER_PRESETS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", help="MODEL,SLICE pairs of configs/pod.py (default: the paper presets)")
    presets = parser.parse_args().presets or _paper_presets()
    print(f"{'preset':24s} {'compiled GiB':>12s} {'estimated GiB':>13s} {'ratio':>6s} {'compile s':>9s}")
    for preset in presets:
        model, slice_name = preset.split(",")
        start = time.perf_counter()
        compiled, estimated = train_temporaries(load_config(f"pod.py:{preset}"), parse_slice(slice_name))
        seconds = time.perf_counter() - start
        print(f"{preset:24s} {compiled / GiB:12.2f} {estimated / GiB:13.2f} {estimated / compiled:6.2f} {seconds:9.1f}",
              flush=True)  # fmt: skip
        jax.clear_caches()


if __name__ == "__main__":
    main()
