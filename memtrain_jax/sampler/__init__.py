"""Jitted, mesh-sharded generation with a KV cache, returning the policy's log-probabilities."""

from memtrain_jax.sampler.sampler import (
    NO_STOP,
    Buckets,
    GenerationResult,
    SampleOutput,
    Sampler,
    choose_tokens,
    generate,
    next_token_logits,
    sample,
)

__all__ = [
    "NO_STOP",
    "Buckets",
    "GenerationResult",
    "SampleOutput",
    "Sampler",
    "choose_tokens",
    "generate",
    "next_token_logits",
    "sample",
]
