"""The model's static description: one frozen dataclass, hashable for `jax.jit`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from memtrain_jax.config import section_values
from memtrain_jax.model import families

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_BACKENDS = ("auto", "reference", "blocked", "splash", "cudnn")  # see memtrain_jax/model/attention.py
ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer covering Llama 2/3, Qwen2/2.5 (QKV bias) and Qwen3 (q/k RMSNorm).

    `rope_scaling` is Llama-3 style scaling as sorted (key, value) pairs, keys from
    ROPE_SCALING_KEYS, or None. `dtype` is the compute dtype; `param_dtype` the storage dtype.
    `attention` names the attention backend (ATTENTION_BACKENDS; "auto" = splash on TPU, cudnn on
    GPU, blocked elsewhere); `attention_block_q` / `attention_block_kv` are the query / key block
    sizes of the blocked and splash backends.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, float], ...] | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    max_position_embeddings: int = 32768
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = False
    remat: str = "none"
    family: str = "llama"
    attention: str = "auto"
    attention_block_q: int = 256
    attention_block_kv: int = 512

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)!r}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads} "
                "(grouped-query attention)."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}.")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; choose one of {sorted(DTYPES)}.")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat={self.remat!r}; choose one of {REMAT_POLICIES}.")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"ModelConfig.attention={self.attention!r}; choose one of {ATTENTION_BACKENDS}.")
        for name in ("attention_block_q", "attention_block_kv"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}.")
        if self.family not in families.names():
            raise ValueError(f"ModelConfig.family={self.family!r}; choose one of {families.names()}.")
        if self.rope_scaling is not None:
            if isinstance(self.rope_scaling, Mapping):
                object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
            keys = {k for k, _ in self.rope_scaling}
            if keys != set(ROPE_SCALING_KEYS):
                raise ValueError(f"rope_scaling needs exactly the keys {ROPE_SCALING_KEYS}, got {sorted(keys)}.")
            object.__setattr__(self, "rope_scaling", tuple(sorted((k, float(v)) for k, v in self.rope_scaling)))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from a dict or ml-collections ConfigDict; an unknown key is an error."""
        values = section_values(cls, values, "model config")
        if isinstance(values.get("rope_scaling"), Mapping):
            values["rope_scaling"] = tuple(sorted(values["rope_scaling"].items()))
        elif values.get("rope_scaling") is not None:
            values["rope_scaling"] = tuple(tuple(kv) for kv in values["rope_scaling"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        if self.rope_scaling is not None:
            values["rope_scaling"] = dict(self.rope_scaling)
        return values

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Exact parameter count, from the shapes of the parameter tree."""
        h, m, n, k, d = self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = h * n * d + 2 * h * k * d + n * d * h
        if self.qkv_bias:
            attn += n * d + 2 * k * d
        if self.qk_norm:
            attn += 2 * d
        layer = attn + 3 * h * m + 2 * h
        head = 0 if self.tie_embeddings else h * self.vocab_size
        return self.vocab_size * h + self.num_layers * layer + h + head
