"""Model size presets: ModelConfig fields of each supported checkpoint, by name.

Values are copied from each model's Hugging Face `config.json` (vocab, widths, depth, heads, head_dim, RoPE theta
and scaling, tied embeddings, RMSNorm epsilon, QKV bias / QK norm, context length). `tiny` is a CPU test model.
They live in the package (not in the checkout's configs/, whose models.py only wraps them) so that an installed
memtrain_jax builds a preset anywhere: `ModelConfig.from_dict(preset_values("qwen2.5-0.5b"))`.
"""

from __future__ import annotations

from typing import Any

from memtrain_jax.config import UsageError

_LLAMA3_SCALING_8 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192.0,
}
_LLAMA3_SCALING_32 = dict(_LLAMA3_SCALING_8, factor=32.0)


def _qwen2(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, **kw: Any) -> dict[str, Any]:
    """Qwen2.5: QKV bias, head_dim = hidden / heads, theta 1e6, eps 1e-6."""
    values = dict(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=hidden // heads,
        rope_theta=1_000_000.0,
        rope_scaling=None,
        rms_norm_eps=1e-6,
        qkv_bias=True,
        qk_norm=False,
        tie_embeddings=True,
        max_position_embeddings=32768,
        family="qwen2",
    )
    values.update(kw)
    return values


def _qwen3(hidden: int, intermediate: int, **kw: Any) -> dict[str, Any]:
    """Qwen3 dense: q/k RMSNorm, 36 layers, 32 query / 8 kv heads of 128, theta 1e6, eps 1e-6."""
    values = dict(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rope_theta=1_000_000.0,
        rope_scaling=None,
        rms_norm_eps=1e-6,
        qkv_bias=False,
        qk_norm=True,
        tie_embeddings=True,
        max_position_embeddings=40960,
        family="qwen3",
    )
    values.update(kw)
    return values


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


# name -> ModelConfig fields (architecture only; dtype / scan / remat keep the ModelConfig defaults).
PRESETS: dict[str, dict[str, Any]] = {
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
    "qwen2.5-0.5b": _qwen2(896, 4864, 24, 14, 2),
    "qwen2.5-1.5b": _qwen2(1536, 8960, 28, 12, 2, max_position_embeddings=131072),
    "qwen2.5-3b": _qwen2(2048, 11008, 36, 16, 2),
    "qwen2.5-7b": _qwen2(
        3584, 18944, 28, 28, 4, vocab_size=152064, tie_embeddings=False, max_position_embeddings=131072
    ),
    "qwen3-4b": _qwen3(2560, 9728),
    "qwen3-8b": _qwen3(4096, 12288, tie_embeddings=False),
    "llama-3.2-1b": _llama3(2048, 8192, 16, 32, 64),
    "llama-3.2-3b": _llama3(3072, 8192, 28, 24, 128),
    "llama-3.1-8b": _llama3(4096, 14336, 32, 32, 128, rope_scaling=dict(_LLAMA3_SCALING_8), tie_embeddings=False),
}

# Published total parameter counts (model cards / safetensors metadata), for tests and `describe`.
PUBLISHED_NUM_PARAMS: dict[str, int] = {
    "smollm2-135m": 134_515_008,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-4b": 4_022_468_096,
    "qwen3-8b": 8_190_735_360,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248,
}


def preset_values(name: str | None) -> dict[str, Any]:
    """The ModelConfig fields of preset `name` (a fresh dict; one of PRESETS)."""
    if not name or name not in PRESETS:
        raise UsageError(
            f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)} (e.g. configs/models.py:qwen2.5-0.5b)."
        )
    values = dict(PRESETS[name])
    if isinstance(values.get("rope_scaling"), dict):
        values["rope_scaling"] = dict(values["rope_scaling"])
    return values
