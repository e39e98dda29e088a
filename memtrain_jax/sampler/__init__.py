"""Jitted, mesh-sharded generation with a KV cache, returning the policy's log-probabilities."""

from memtrain_jax.sampler.sampler import (
    NO_STOP,
    Buckets,
    GenerationResult,
    SampleOutput,
    Sampler,
    choose_tokens,
    decode,
    draw_tokens,
    expand_prefix,
    generate,
    next_token_logits,
    prefill_prompts,
    rows_from_prefix,
    sample,
    sample_from_prefix,
)

__all__ = [
    "NO_STOP",
    "Buckets",
    "GenerationResult",
    "SampleOutput",
    "Sampler",
    "choose_tokens",
    "decode",
    "draw_tokens",
    "expand_prefix",
    "generate",
    "next_token_logits",
    "prefill_prompts",
    "rows_from_prefix",
    "sample",
    "sample_from_prefix",
]
