"""Helpers shared by the benchmarks (run as scripts: `python benchmarks/bench_*.py` puts this folder on the path)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


def matmul_peaks(n: int = 2048, runs: int = 5) -> dict[str, float]:
    """Float32 matmul FLOP/s of jax, numpy and torch on [n, n] x [n, n]."""
    flops = 2 * n**3
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ja = jnp.asarray(a)
    mm = jax.jit(lambda x, y: x @ y)
    peaks = {"jax": flops / best_time(lambda: mm(ja, ja).block_until_ready(), runs)}
    peaks["numpy"] = flops / best_time(lambda: a @ a, runs)
    try:
        import torch

        ta = torch.from_numpy(a)
        peaks["torch"] = flops / best_time(lambda: ta @ ta, runs)
    except ImportError:
        pass
    return peaks


def copy_bandwidth(on_accelerator: bool) -> float:
    """Measured copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    if on_accelerator:
        x = jnp.ones((256 * 1024 * 1024,), jnp.float32)  # 1 GiB
        copy = jax.jit(lambda a: a * 1.0)
        return 2 * x.nbytes / best_time(lambda: copy(x).block_until_ready(), 5)
    src = np.ones(64 * 1024 * 1024, np.float64)  # 512 MiB
    dst = np.empty_like(src)
    return 2 * src.nbytes / best_time(lambda: np.copyto(dst, src), 5)
