"""A closed-form estimate of per-chip memory: parameters, optimizer state, KV cache, activations.

Runs anywhere (no compiler). It assumes the default logical-axis rules (sharding.DEFAULT_RULES):
weight matrices split over fsdp (the model width) and tensor (heads, MLP width, vocabulary; a dimension
an axis does not divide stays whole), norms replicated, the batch split over data x fsdp and the KV
heads over tensor. The compiled plan (`memtrain plan`) is the authority; this is what to reason with.

    parameters   = sum over weights of numel / (its split) x bytes(param_dtype)
    optimizer    = 2 x trainable parameters (AdamW's first and second moments, in the parameters' dtype)
    reference    = parameters (the KL reference copy, when rl.kl_coef > 0)
    gradients    = trainable parameters (the accumulator of a step's micro-batches)
    kv_cache     = 2 x layers x rows/batch_split x kv_heads/kv_split x slots x head_dim x bytes(dtype)
    activations  = rows/batch_split x length x width x bytes(compute dtype) x A, where
                   A = 4 x (layers + 1) with "full" remat (scanned layers, as the presets run): measured on the
                       TPU compiler's train step for every paper preset, the backward keeps 3.9-4.4 such
                       [rows, length, width] tensors a layer (the saved layer inputs and the scan's working
                       copies of them) and about four for the layer it recomputes;
                   A = 34 x layers without remat, 2 x layers + 34 with the "dots" policy (after Korthikanti et
                       al. 2022, blocked attention: no [length x length] scores are kept; not checked against
                       a compiler)
    logits       = rows/batch_split x logprob_chunk x vocab/tensor x 4 bytes (float32 log-softmax block)
    train temporaries = activations + logits + gradients (jax.grad's fresh gradient tree, before it is added
                   to the step's accumulator): the `accumulate` program's temporaries

Parameters, optimizer state, reference, gradients and KV cache are exact for the default rules (tests/test_plan.py
checks them against the arrays on a mesh and the TPU compiler's arguments). The train temporaries are within
25 % of the compiled `accumulate` program's on every paper preset (tests/test_plan.py compiles them; the
README's table). What the estimate leaves out: the decode's working copies (the rollout programs' `temps`
column) and collective buffers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from memtrain_jax.model.config import ModelConfig


def _split(dim: int, *axes: int) -> int:
    """How many ways `dim` is split by mesh axes of these sizes (an axis that does not divide is skipped)."""
    ways = 1
    for size in axes:
        if dim % (ways * size) == 0:
            ways *= size
    return ways


def parameter_bytes(config: ModelConfig, mesh: Mapping[str, int]) -> int:
    """Bytes of one chip's shard of the parameters, under the default rules."""
    f, t = mesh["fsdp"], mesh["tensor"]
    h, d, n, k, m, v = (
        config.hidden_size, config.head_dim, config.num_heads, config.num_kv_heads,
        config.intermediate_size, config.vocab_size,
    )  # fmt: skip
    width = _split(h, f)
    per_layer = (
        h * n * d / (width * _split(n, t))  # q
        + 2 * h * k * d / (width * _split(k, t))  # k, v
        + n * d * h / (_split(n, t) * width)  # o
        + 3 * h * m / (width * _split(m, t))  # gate, up, down
        + 2 * h  # input and post-attention norms (replicated)
    )
    if config.qk_norm:
        per_layer += 2 * d
    if config.qkv_bias:
        per_layer += n * d / _split(n, t) + 2 * k * d / _split(k, t)
    embed = v * h / (_split(v, t) * width)
    total = config.num_layers * per_layer + embed * (1 if config.tie_embeddings else 2) + h
    return int(round(total)) * np.dtype(config.weight_dtype).itemsize


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Per-chip bytes of each part (see the module docstring)."""

    parameters: int
    optimizer: int
    reference: int
    gradients: int
    kv_cache: int
    activations: int
    logits: int

    @property
    def resident(self) -> int:
        """What stays on the chip through a step: parameters, optimizer state, KL reference."""
        return self.parameters + self.optimizer + self.reference

    @property
    def train_temporaries(self) -> int:
        """The train step's `accumulate` temporaries: activations, the log-softmax block and the fresh gradients."""
        return self.activations + self.logits + self.gradients

    @property
    def train_peak(self) -> int:
        """Resident state, the gradient accumulator and the train temporaries."""
        return self.resident + self.gradients + self.train_temporaries

    @property
    def rollout_peak(self) -> int:
        return self.resident + self.kv_cache


def estimate(
    config: ModelConfig,
    mesh: Mapping[str, int],
    *,
    trainable_fraction: float = 1.0,
    with_reference: bool = True,
    rollout_rows: int,
    rollout_slots: int,
    train_rows: int,
    train_length: int,
    logprob_chunk: int,
    cache_dtype: str | None = None,
) -> MemoryEstimate:
    """The per-chip estimate for one mesh ({"data", "fsdp", "tensor"} sizes) and the run's shapes."""
    params = parameter_bytes(config, mesh)
    trainable = int(round(params * trainable_fraction))
    batch_split = mesh["data"] * mesh["fsdp"]
    dtype = np.dtype(cache_dtype or config.compute_dtype).itemsize
    rows = -(-rollout_rows // batch_split)
    kv = 2 * config.num_layers * rows * (config.num_kv_heads // _split(config.num_kv_heads, mesh["tensor"]))
    kv *= rollout_slots * config.head_dim * dtype
    train_rows = -(-train_rows // batch_split)
    per_layer = train_rows * train_length * config.hidden_size * np.dtype(config.compute_dtype).itemsize
    if config.remat == "none":
        activations = config.num_layers * 34 * per_layer
    elif config.remat == "full":  # layer inputs kept, one layer recomputed at a time (measured: module docstring)
        activations = 4 * (config.num_layers + 1) * per_layer
    else:  # "dots": the layer inputs and its matmul outputs kept
        activations = config.num_layers * 2 * per_layer + 34 * per_layer
    vocab = config.vocab_size // _split(config.vocab_size, mesh["tensor"])
    logits = train_rows * logprob_chunk * vocab * 4
    return MemoryEstimate(
        parameters=params,
        optimizer=2 * trainable,
        reference=params if with_reference else 0,
        gradients=trainable,
        kv_cache=kv,
        activations=activations,
        logits=logits,
    )
