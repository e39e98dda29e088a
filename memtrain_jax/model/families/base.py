"""What a model family is: one frozen spec, and the weight map every checkpoint format shares.

A family (`ModelConfig.family`) fixes what the architecture adds to the Llama block (QKV biases for Qwen2, q/k
RMSNorm for Qwen3), its names in Hugging Face `config.json` and in GGUF metadata, the config.json fields its
transformers class expects on export, whether llama.cpp stores its q/k rows interleaved, and its size presets.
The importers (`checkpoint/hf.py`, `checkpoint/gguf.py`) are loops over `tensors(config)` that ask the family
for the rest, so adding a family is one module under `model/families/` (registered with `register`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from memtrain_jax.model.config import ModelConfig


def _no_extras(config: ModelConfig) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family.

    name: `ModelConfig.family`. hf_architecture: config.json's `architectures[0]` (also `model_type` = name).
    gguf_architecture: GGUF's `general.architecture` (the prefix of its hyper-parameter keys).
    qkv_bias / qk_norm: the block's additions to Llama's (biases on q/k/v; RMSNorm on each head's q and k).
    gguf_permuted_qk: llama.cpp's converter interleaves the q/k rows for its RoPE (LlamaModel.permute); the
    importer undoes it. hf_extras: config.json fields beyond the shared ones that the transformers class
    reads, for `config_to_hf`. presets: name -> ModelConfig fields of published checkpoints
    (`model/presets.py`; the family's name and block flags are filled in);
    published_num_params: their parameter counts from the model cards (checked by the tests).
    """

    name: str
    hf_architecture: str
    gguf_architecture: str
    qkv_bias: bool = False
    qk_norm: bool = False
    gguf_permuted_qk: bool = False
    hf_extras: Callable[[ModelConfig], dict[str, Any]] = _no_extras
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    published_num_params: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # A preset gets its family's name and block flags from the family: they are stated once, here.
        flags = {"family": self.name, "qkv_bias": self.qkv_bias, "qk_norm": self.qk_norm}
        object.__setattr__(self, "presets", {name: {**values, **flags} for name, values in self.presets.items()})


def size(
    vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, head_dim: int, **kw: Any
) -> dict[str, Any]:
    """A preset's ModelConfig fields: the widths and depth, then `kw` over the defaults (RoPE theta 1e4 without
    scaling, RMSNorm eps 1e-6, untied embeddings, 2K positions)."""
    values = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=10000.0,
        rope_scaling=None,
        rms_norm_eps=1e-6,
        tie_embeddings=False,
        max_position_embeddings=2048,
    )
    values.update(kw)
    return values


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Adds `family` to the registry (a family module calls this once at import)."""
    if family.name in _FAMILIES:
        raise ValueError(f"Model family {family.name!r} is registered twice.")
    clash = [f.name for f in _FAMILIES.values() if set(f.presets) & set(family.presets)]
    if clash:
        raise ValueError(f"Model family {family.name!r} reuses preset names of {clash}.")
    _FAMILIES[family.name] = family
    return family


def names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def get(name: str) -> Family:
    """The family called `name` (a bad name is an error that shows it and the choices)."""
    if name not in _FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; choose one of {names()}.")
    return _FAMILIES[name]


def by_hf_architecture(architecture: str) -> Family | None:
    return next((f for f in _FAMILIES.values() if f.hf_architecture == architecture), None)


def by_gguf_architecture(architecture: str) -> Family | None:
    return next((f for f in _FAMILIES.values() if f.gguf_architecture == architecture), None)


def hf_architectures() -> dict[str, str]:
    """config.json architecture -> family name, for every registered family."""
    return {f.hf_architecture: f.name for f in _FAMILIES.values()}


# ---------------------------------------------------------------------------------------------- weight map


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One weight: its place in our (non-scanned) parameter tree and its names in HF and GGUF checkpoints.

    hf_shape is the torch layout both formats store ([out, in] for a Linear weight); `shape` is ours: a
    kernel is W.T reshaped (`transpose`), other tensors are plain reshapes. qk_heads > 0 marks the q/k
    projection weights (their number of heads), whose rows llama.cpp may have interleaved.
    """

    hf_name: str
    gguf_name: str
    path: tuple[str, ...]  # e.g. ("layers_3", "attn", "q_proj", "kernel")
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]
    transpose: bool
    layer: int | None = None
    qk_heads: int = 0

    def to_ours(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.T if self.transpose else w).reshape(self.shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.transpose:
            return np.ascontiguousarray(x.reshape(self.hf_shape[::-1]).T)
        return np.ascontiguousarray(x.reshape(self.hf_shape))

    @property
    def scanned_path(self) -> tuple[str, ...]:
        """Its path when the layers are one stacked (scanned) tree."""
        return self.path if self.layer is None else ("layers", *self.path[1:])


def tensors(config: ModelConfig) -> list[Tensor]:
    """Every weight of `config`'s model, in the order transformers writes them (the one weight map of both
    checkpoint formats; the block's optional tensors follow config.qkv_bias / config.qk_norm)."""
    h, m, n, k, d, v = (
        config.hidden_size,
        config.intermediate_size,
        config.num_heads,
        config.num_kv_heads,
        config.head_dim,
        config.vocab_size,
    )
    out = [Tensor("model.embed_tokens.weight", "token_embd.weight", ("embedder", "embedding"), (v, h), (v, h), False)]
    for i in range(config.num_layers):

        def add(
            hf: str, gguf: str, path: tuple[str, ...], hf_shape, shape, transpose: bool, qk_heads: int = 0, i=i
        ) -> None:
            out.append(
                Tensor(
                    f"model.layers.{i}.{hf}",
                    f"blk.{i}.{gguf}",
                    (f"layers_{i}", *path),
                    tuple(hf_shape),
                    tuple(shape),
                    transpose,
                    i,
                    qk_heads,
                )
            )

        add("input_layernorm.weight", "attn_norm.weight", ("input_norm", "scale"), (h,), (h,), False)
        for proj, gguf, heads, qk in (
            ("q_proj", "attn_q", n, n),
            ("k_proj", "attn_k", k, k),
            ("v_proj", "attn_v", k, 0),
        ):
            add(
                f"self_attn.{proj}.weight",
                f"{gguf}.weight",
                ("attn", proj, "kernel"),
                (heads * d, h),
                (h, heads, d),
                True,
                qk,
            )
            if config.qkv_bias:
                add(
                    f"self_attn.{proj}.bias",
                    f"{gguf}.bias",
                    ("attn", proj, "bias"),
                    (heads * d,),
                    (heads, d),
                    False,
                    qk,
                )
        add("self_attn.o_proj.weight", "attn_output.weight", ("attn", "o_proj", "kernel"), (h, n * d), (n, d, h), True)
        if config.qk_norm:
            add("self_attn.q_norm.weight", "attn_q_norm.weight", ("attn", "q_norm", "scale"), (d,), (d,), False)
            add("self_attn.k_norm.weight", "attn_k_norm.weight", ("attn", "k_norm", "scale"), (d,), (d,), False)
        add("post_attention_layernorm.weight", "ffn_norm.weight", ("post_attn_norm", "scale"), (h,), (h,), False)
        add("mlp.gate_proj.weight", "ffn_gate.weight", ("mlp", "gate_proj", "kernel"), (m, h), (h, m), True)
        add("mlp.up_proj.weight", "ffn_up.weight", ("mlp", "up_proj", "kernel"), (m, h), (h, m), True)
        add("mlp.down_proj.weight", "ffn_down.weight", ("mlp", "down_proj", "kernel"), (h, m), (m, h), True)
    out.append(Tensor("model.norm.weight", "output_norm.weight", ("final_norm", "scale"), (h,), (h,), False))
    if not config.tie_embeddings:
        out.append(Tensor("lm_head.weight", "output.weight", ("lm_head", "kernel"), (v, h), (h, v), True))
    return out
