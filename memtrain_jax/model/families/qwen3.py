"""Qwen3 dense (Qwen3ForCausalLM): RMSNorm on each head's q and k, no biases. llama.cpp keeps HF's q/k order."""

from __future__ import annotations

from typing import Any

from memtrain_jax.model.families.base import Family, register, size
from memtrain_jax.model.families.qwen2 import sliding_window_off


def _qwen3(hidden: int, intermediate: int, **kw: Any) -> dict[str, Any]:
    """Qwen3 dense: 36 layers, 32 query / 8 kv heads of 128, theta 1e6, eps 1e-6, tied, 40K context."""
    qwen3 = dict(rope_theta=1_000_000.0, tie_embeddings=True, max_position_embeddings=40960)
    return size(151936, hidden, intermediate, 36, 32, 8, 128, **{**qwen3, **kw})


PRESETS: dict[str, dict[str, Any]] = {
    "qwen3-4b": _qwen3(2560, 9728),
    "qwen3-8b": _qwen3(4096, 12288, tie_embeddings=False),
}

QWEN3 = register(
    Family(
        name="qwen3",
        hf_architecture="Qwen3ForCausalLM",
        gguf_architecture="qwen3",
        qk_norm=True,
        hf_extras=lambda config: {**sliding_window_off(config), "attention_bias": False},
        presets=PRESETS,
        published_num_params={"qwen3-4b": 4_022_468_096, "qwen3-8b": 8_190_735_360},
    )
)
