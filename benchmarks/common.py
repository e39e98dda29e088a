"""Helpers shared by the benchmarks (run as scripts: `python benchmarks/bench_*.py` puts this folder on the path)."""

from __future__ import annotations

import time
from collections.abc import Callable

from memtrain_jax.model import ModelConfig


def best_time(fn: Callable[[], object], runs: int) -> float:
    """Fastest of `runs` calls (after one warm-up call): the least disturbed figure."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def layer_matmul_params(config: ModelConfig) -> int:
    """Parameters of the layers' projections (what every token multiplies by)."""
    h, m, n, k, d = config.hidden_size, config.intermediate_size, config.num_heads, config.num_kv_heads, config.head_dim
    return config.num_layers * (2 * h * n * d + 2 * h * k * d + 3 * h * m)


def tunix_shape(config: ModelConfig) -> dict:
    """google-tunix's model-config fields for the same shapes as ours."""
    return dict(
        num_layers=config.num_layers,
        vocab_size=config.vocab_size,
        embed_dim=config.hidden_size,
        hidden_dim=config.intermediate_size,
        num_heads=config.num_heads,
        head_dim=config.head_dim,
        num_kv_heads=config.num_kv_heads,
        rope_theta=int(config.rope_theta),
        norm_eps=config.rms_norm_eps,
    )
