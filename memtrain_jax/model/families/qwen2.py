"""Qwen2 / Qwen2.5 (Qwen2ForCausalLM): biases on the q/k/v projections. llama.cpp keeps HF's q/k row order."""

from __future__ import annotations

from typing import Any

from memtrain_jax.model.families.base import Family, register, size


def _qwen2(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, **kw: Any) -> dict[str, Any]:
    """Qwen2.5: head_dim = hidden / heads, theta 1e6, eps 1e-6, tied, 32K context."""
    qwen2 = dict(rope_theta=1_000_000.0, tie_embeddings=True, max_position_embeddings=32768)
    return size(151936, hidden, intermediate, layers, heads, kv_heads, hidden // heads, **{**qwen2, **kw})


PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": _qwen2(896, 4864, 24, 14, 2),
    "qwen2.5-1.5b": _qwen2(1536, 8960, 28, 12, 2, max_position_embeddings=131072),
    "qwen2.5-3b": _qwen2(2048, 11008, 36, 16, 2),
    "qwen2.5-7b": _qwen2(
        3584, 18944, 28, 28, 4, vocab_size=152064, tie_embeddings=False, max_position_embeddings=131072
    ),
}


def sliding_window_off(config: Any) -> dict[str, Any]:
    """config.json fields of the Qwen classes that say every layer attends in full."""
    return {"use_sliding_window": False, "sliding_window": None, "max_window_layers": config.num_layers}


QWEN2 = register(
    Family(
        name="qwen2",
        hf_architecture="Qwen2ForCausalLM",
        gguf_architecture="qwen2",
        qkv_bias=True,
        hf_extras=sliding_window_off,
        presets=PRESETS,
        published_num_params={
            "qwen2.5-0.5b": 494_032_768,
            "qwen2.5-1.5b": 1_543_714_304,
            "qwen2.5-3b": 3_085_938_688,
            "qwen2.5-7b": 7_615_616_512,
        },
    )
)
