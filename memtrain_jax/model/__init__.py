"""Decoder-only transformer: config, parameters, forward pass and KV cache."""

from memtrain_jax.model.config import ModelConfig
from memtrain_jax.model.logprobs import token_logprobs, token_logprobs_and_entropy
from memtrain_jax.model.transformer import (
    KVCache,
    Transformer,
    apply_model,
    cache_length,
    cache_logical_specs,
    cache_shardings,
    default_positions,
    expand_prefix,
    forward,
    init_cache,
    init_params,
    param_logical_specs,
    param_shapes,
    param_shardings,
    prefill,
    stack_layers,
    unstack_layers,
)

__all__ = [
    "KVCache",
    "ModelConfig",
    "Transformer",
    "apply_model",
    "cache_length",
    "cache_logical_specs",
    "cache_shardings",
    "default_positions",
    "expand_prefix",
    "forward",
    "init_cache",
    "init_params",
    "param_logical_specs",
    "param_shardings",
    "param_shapes",
    "prefill",
    "stack_layers",
    "token_logprobs",
    "token_logprobs_and_entropy",
    "unstack_layers",
]
