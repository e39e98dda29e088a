"""Llama 2/3 (LlamaForCausalLM; SmolLM2 too): the plain block. llama.cpp stores its q/k rows interleaved."""

from __future__ import annotations

from typing import Any

from memtrain_jax.model.families.base import Family, register, size

_LLAMA3_SCALING_8 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192.0,
}
_LLAMA3_SCALING_32 = dict(_LLAMA3_SCALING_8, factor=32.0)


def _llama3(hidden: int, intermediate: int, layers: int, heads: int, head_dim: int, **kw: Any) -> dict[str, Any]:
    """Llama 3.x: 8 kv heads, theta 5e5, llama3 RoPE scaling, eps 1e-5, 128K context."""
    llama3 = dict(
        rope_theta=500_000.0,
        rope_scaling=dict(_LLAMA3_SCALING_32),
        rms_norm_eps=1e-5,
        tie_embeddings=True,
        max_position_embeddings=131072,
    )
    return size(128256, hidden, intermediate, layers, heads, 8, head_dim, **{**llama3, **kw})


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": size(512, 64, 128, 2, 4, 2, 16),  # a CPU test model
    # HuggingFaceTB/SmolLM2-135M (LlamaForCausalLM).
    "smollm2-135m": size(
        49152,
        576,
        1536,
        30,
        9,
        3,
        64,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_embeddings=True,
        max_position_embeddings=8192,
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
