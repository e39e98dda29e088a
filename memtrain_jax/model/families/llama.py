"""Llama 2/3 (LlamaForCausalLM; SmolLM2 too): the plain block. llama.cpp stores its q/k rows interleaved."""

from __future__ import annotations

from typing import Any

from memtrain_jax.model.families.base import Family, register

_LLAMA3_SCALING_8 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192.0,
}
_LLAMA3_SCALING_32 = dict(_LLAMA3_SCALING_8, factor=32.0)


def _llama3(hidden: int, intermediate: int, layers: int, heads: int, head_dim: int, **kw: Any) -> dict[str, Any]:
    """Llama 3.x: 8 kv heads, theta 5e5, llama3 RoPE scaling, eps 1e-5, 128K context."""
    values = dict(
        vocab_size=128256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=8,
        head_dim=head_dim,
        rope_theta=500_000.0,
        rope_scaling=dict(_LLAMA3_SCALING_32),
        rms_norm_eps=1e-5,
        qkv_bias=False,
        qk_norm=False,
        tie_embeddings=True,
        max_position_embeddings=131072,
        family="llama",
    )
    values.update(kw)
    return values


PRESETS: dict[str, dict[str, Any]] = {
    # A CPU test model.
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        rope_theta=10000.0,
        rope_scaling=None,
        rms_norm_eps=1e-6,
        qkv_bias=False,
        qk_norm=False,
        tie_embeddings=False,
        max_position_embeddings=2048,
        family="llama",
    ),
    # HuggingFaceTB/SmolLM2-135M (LlamaForCausalLM).
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rope_theta=100000.0,
        rope_scaling=None,
        rms_norm_eps=1e-5,
        qkv_bias=False,
        qk_norm=False,
        tie_embeddings=True,
        max_position_embeddings=8192,
        family="llama",
    ),
    "llama-3.2-1b": _llama3(2048, 8192, 16, 32, 64),
    "llama-3.2-3b": _llama3(3072, 8192, 28, 24, 128),
    "llama-3.1-8b": _llama3(4096, 14336, 32, 32, 128, rope_scaling=dict(_LLAMA3_SCALING_8), tie_embeddings=False),
}

LLAMA = register(
    Family(
        name="llama",
        hf_architecture="LlamaForCausalLM",
        gguf_architecture="llama",
        gguf_permuted_qk=True,
        hf_extras=lambda config: {"attention_bias": False, "mlp_bias": False},
        presets=PRESETS,
        published_num_params={
            "smollm2-135m": 134_515_008,
            "llama-3.2-1b": 1_235_814_400,
            "llama-3.2-3b": 3_212_749_824,
            "llama-3.1-8b": 8_030_261_248,
        },
    )
)
