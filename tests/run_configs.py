"""Training configs for tests: a config file's variant with test caches and dotted overrides."""

from __future__ import annotations

from memtrain_jax.config import load_config


def run_config(name: str, cache_dir, **overrides):
    """`load_config(name)` with caches under `cache_dir`, synchronous checkpoints, no DAPO filter (a random
    model's rewards are all 0: keep the GRPO updates in the test) and `overrides` ("a.b" -> value)."""
    config = load_config(name)
    config.data.cache_dir = str(cache_dir)
    config.model.cache_dir = str(cache_dir)
    config.compilation_cache = ""  # tests compile fresh (test_compile_cache checks the cache)
    config.rl.dapo_filter = False
    config.train.async_checkpoints = False
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config
