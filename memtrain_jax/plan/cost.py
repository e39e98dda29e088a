"""Analytic cost of a run's programs: FLOPs and HBM bytes from the model's shapes, and a roofline time.

XLA's cost analysis does not count custom kernels (splash attention) and counts a decode loop as one step, so
`memtrain plan` prints these figures beside it. Counted (per program, whole mesh; divide by chips for a chip):

  matmul FLOPs a token   2 * L * (d*H*h + 2*d*K*h + H*h*d + 3*d*f)      (q, k, v, o projections; gate, up, down)
  lm head a scored token 2 * d * V
  attention              4 * L * H * h * (keys a query attends)          (QK^T and PV; causal: the keys up to it)
  prefill [U, P]         U * P tokens through L - 1 layers; the last layer projects keys and values of every
                         position but queries, output and MLP of the last one only, and the head reads it
  decode [B, P, N]       B * N tokens and heads, B * (N * P + N (N - 1) / 2) attended keys (every step of its loop)
  train [M, S]           forward of every layer; backward (2x forward) of the trainable ones (+1 forward with
                         full remat, +attention with "dots"); the head on the scored positions 4x: forward,
                         forward again in the backward pass (token_logprobs' vocabulary blocks keep no logits)
                         and its two backward matmuls
  bytes                  weights read once a program (prefill, train forward and backward) or once a decode
                         step, plus the KV cache written (prefill) or read (each decode step)

Elementwise work (norms, rope, softmax, the sampler's top-p sort) is not counted: it is a few percent of a
matmul-bound program and is bandwidth-bound. The roofline time is max(FLOPs / peak, bytes / bandwidth).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from memtrain_jax.model import ModelConfig


@dataclasses.dataclass(frozen=True)
class Cost:
    """FLOPs and HBM bytes of a program (or a sum of programs) over the whole mesh: `weights` (bytes of
    weight reads) apart from `state` (KV cache, activations), since every chip reads the weights it
    gathers but only its own rows' state."""

    flops: float
    weights: float
    state: float = 0.0

    @property
    def bytes(self) -> float:
        return self.weights + self.state

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.weights + other.weights, self.state + other.state)

    def __mul__(self, times: float) -> Cost:
        return Cost(self.flops * times, self.weights * times, self.state * times)

    def per_chip(self, chips: int, weight_shards: int = 1) -> Cost:
        """One chip's share when the rows are split over `chips` and each weight over `weight_shards` chips
        (tensor parallelism; FSDP gathers every weight to every chip before use)."""
        return Cost(self.flops / chips, self.weights / weight_shards, self.state / chips)

    def seconds(self, peak_flops: float, bandwidth: float) -> float:
        """The roofline time: max(FLOPs / peak FLOP/s, bytes / bandwidth in bytes/s)."""
        return max(self.flops / peak_flops, self.bytes / bandwidth)


def matmul_flops_per_token(model: ModelConfig, layers: int | None = None) -> float:
    """Forward FLOPs of the decoder layers' matmuls for one token (`layers` of them; default all)."""
    d, f, heads, kv, h = model.hidden_size, model.intermediate_size, model.num_heads, model.num_kv_heads, model.head_dim
    per_layer = 2 * (d * heads * h + 2 * d * kv * h + heads * h * d + 3 * d * f)
    return float(per_layer * (model.num_layers if layers is None else layers))


def head_flops_per_token(model: ModelConfig) -> float:
    return float(2 * model.hidden_size * model.vocab_size)


def attention_flops(model: ModelConfig, keys: float, layers: int | None = None) -> float:
    """QK^T and PV FLOPs for `keys` (query, key) pairs summed over the queries, in `layers` layers."""
    layers = model.num_layers if layers is None else layers
    return float(4 * layers * model.num_heads * model.head_dim * keys)


def weight_bytes(model: ModelConfig) -> float:
    """Bytes of the weights a forward pass reads: all but an untied input embedding table (only the looked-up
    rows of it are read; a tied table is the lm head and read whole)."""
    table = 0 if model.tie_embeddings else model.vocab_size * model.hidden_size
    return float((model.num_params() - table) * np.dtype(model.param_dtype).itemsize)


def kv_bytes_per_token(model: ModelConfig) -> float:
    """Bytes of one position's keys and values over all layers (the cache is in the compute dtype)."""
    return float(2 * model.num_layers * model.num_kv_heads * model.head_dim * np.dtype(model.dtype).itemsize)


def _attended(length: int, causal: bool) -> float:
    """(query, key) pairs of a [length] sequence: the causal triangle (what a kernel that skips masked blocks
    computes, splash) or the full square (the reference and blocked backends compute masked scores too)."""
    return length * (length + 1) / 2 if causal else float(length * length)


def prefill_cost(model: ModelConfig, rows: int, prompt: int, *, causal: bool = True) -> Cost:
    """[rows, prompt] prompts through the model (transformer.prefill, last_only): the last layer needs the keys
    and values of every position but the rest of its work, and the lm head, on the last position only."""
    tokens = rows * prompt
    last = model.num_layers - 1
    kv = 4 * model.hidden_size * model.num_kv_heads * model.head_dim  # k and v projections, a token
    flops = tokens * (matmul_flops_per_token(model, last) + kv)
    flops += rows * (matmul_flops_per_token(model, 1) - kv + head_flops_per_token(model))
    flops += attention_flops(model, rows * _attended(prompt, causal), last) + attention_flops(model, rows * prompt, 1)
    return Cost(flops, weight_bytes(model), tokens * kv_bytes_per_token(model))


def decode_cost(model: ModelConfig, rows: int, prompt: int, new: int) -> Cost:
    """`new` decode steps of `rows` rows after `prompt` cached positions (all steps of the loop)."""
    keys = rows * (new * prompt + new * (new - 1) / 2)
    flops = rows * new * (matmul_flops_per_token(model) + head_flops_per_token(model)) + attention_flops(model, keys)
    return Cost(flops, new * weight_bytes(model), keys * kv_bytes_per_token(model))


def train_cost(
    model: ModelConfig, rows: int, length: int, *, trainable_layers: int = 0, scored: int = 0, causal: bool = True
) -> Cost:
    """One micro-batch of `rows` sequences of `length` positions through forward and backward.

    trainable_layers: 0 = all (the backward pass runs through them only); scored: positions whose log-prob
    the loss reads, per row (default: all)."""
    layers = model.num_layers
    trained = layers if trainable_layers <= 0 else min(trainable_layers, layers)
    tokens = rows * length
    keys = rows * _attended(length, causal)
    forward = tokens * matmul_flops_per_token(model) + attention_flops(model, keys)
    backward = 2 * (tokens * matmul_flops_per_token(model, trained) + attention_flops(model, keys, trained))
    if model.remat == "full":  # the trained layers' forward again in the backward pass
        backward += tokens * matmul_flops_per_token(model, trained) + attention_flops(model, keys, trained)
    elif model.remat == "dots":  # matmul outputs are saved: only attention is recomputed
        backward += attention_flops(model, keys, trained)
    head = 4 * rows * (scored or length) * head_flops_per_token(model)  # the logits blocks are recomputed
    # the weights are read by the forward pass and again by the backward pass of the trained layers
    read = weight_bytes(model) * (1 + trained / layers)
    return Cost(forward + backward + head, read)


def score_cost(model: ModelConfig, rows: int, length: int, *, scored: int = 0, causal: bool = True) -> Cost:
    """A forward pass that scores `scored` positions a row (the KL reference, recomputed old log-probs)."""
    tokens = rows * length
    flops = tokens * matmul_flops_per_token(model) + attention_flops(model, rows * _attended(length, causal))
    return Cost(flops + rows * (scored or length) * head_flops_per_token(model), weight_bytes(model))


def apply_cost(model: ModelConfig, trainable_layers: int = 0) -> Cost:
    """The optimizer update (AdamW): read parameters, gradients and two moments, write three of them."""
    layers = model.num_layers
    trained = layers if trainable_layers <= 0 else min(trainable_layers, layers)
    share = trained / layers
    n = model.num_params() * share
    # float32 parameters, gradients and moments read and written once; each chip updates its own shard (state)
    return Cost(12 * n, 0.0, 7 * n * 4)


def model_flops(model: ModelConfig, tokens: float, *, trainable_layers: int = 0) -> float:
    """The useful FLOPs of training on `tokens` tokens (the MFU numerator): 6 x matmul FLOPs of the trained
    layers and head, 2 x for the frozen ones (forward only)."""
    trained = model.num_layers if trainable_layers <= 0 else min(trainable_layers, model.num_layers)
    frozen = model.num_layers - trained
    per_token = 3 * (matmul_flops_per_token(model, trained) + head_flops_per_token(model))
    per_token += matmul_flops_per_token(model, frozen)
    return float(tokens * per_token)
