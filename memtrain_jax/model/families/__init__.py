"""Model families, one module each (llama, qwen2, qwen3), registered by name; `base` says what a family is.

Adding a family: a module here with its `Family(...)` and presets, imported below.
"""

from memtrain_jax.model.families import llama, qwen2, qwen3  # noqa: F401  (each registers its family)
from memtrain_jax.model.families.base import (
    Family,
    Tensor,
    by_gguf_architecture,
    by_hf_architecture,
    get,
    hf_architectures,
    names,
    register,
    tensors,
)

__all__ = [
    "Family",
    "Tensor",
    "by_gguf_architecture",
    "by_hf_architecture",
    "get",
    "hf_architectures",
    "names",
    "register",
    "tensors",
]
