"""Teacher-forced log-probabilities (and entropies) of given tokens, without [B, T, V] logits.

The trainer scores every training sequence under the current policy and the reference policy.
With Qwen's 152k vocabulary, float32 logits of 8k positions are 5 GB per row, so the head and the
log-softmax run over blocks of `chunk_size` positions inside a scan, and each block is
rematerialised in the backward pass: memory holds one [B, chunk_size, V] block at a time.

Shapes: B batch, T sequence, H hidden, V vocab, C positions per block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from memtrain_jax.model.config import ModelConfig
from memtrain_jax.model.transformer import Params, apply_model, default_positions, expand_prefix, init_cache

DEFAULT_CHUNK_SIZE = 256


def _block_scores(
    hidden: jax.Array, head: jax.Array, targets: jax.Array, tied: bool, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """hidden [B, C, H], targets [B, C], head [V, H] (tied embedding, used as stored: no transpose copy) or
    [H, V] -> (log p(target) [B, C], entropy [B, C]) of softmax(logits / temperature), float32."""
    spec = "bch,vh->bcv" if tied else "bch,hv->bcv"
    logits = jnp.einsum(spec, hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logits - lse[..., None])
    entropy = lse - jnp.sum(probs * logits, axis=-1)
    return target - lse, entropy


def token_logprobs_and_entropy(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    start: jax.Array | None = None,
    window: int | None = None,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(log p(tokens[:, j+1] | tokens[:, :j+1]), entropy of that distribution), both [B, T-1] float32, with
    p = softmax(logits / temperature) (static; GRPO scores samples under the distribution they were drawn from).

    Traceable (call inside jit; differentiable). tokens: [B, T] int32; attention_mask: [B, T] bool, False
    on padding. Position j is 0 in both outputs unless tokens j and j+1 are both real.

    With `start` [B] int32 and a static `window` W, only positions start_b .. start_b + W - 1 of each row are
    scored ([B, W] outputs; positions past T-2 are 0): a trainer scores the response of a long prompt without
    paying the vocabulary projection at every prompt position.
    """
    b, t = tokens.shape
    if t < 2:
        raise ValueError(f"token_logprobs needs sequences of at least 2 tokens, got shape {tokens.shape}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (the tempered distribution scored), got {temperature}.")
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), bool)
    attention_mask = attention_mask.astype(bool)
    hidden, _ = apply_model(
        config, params, tokens, default_positions(attention_mask), attention_mask, return_hidden=True
    )
    if window is None:
        hidden, targets = hidden[:, :-1], tokens[:, 1:]
        valid = attention_mask[:, :-1] & attention_mask[:, 1:]
    else:
        if start is None or window < 1:
            raise ValueError(f"A scoring window needs start positions and window >= 1, got {window}.")
        index = jnp.asarray(start, jnp.int32)[:, None] + jnp.arange(window, dtype=jnp.int32)[None]  # [B, W]
        inside = index <= t - 2
        index = jnp.minimum(index, t - 2)
        hidden = jnp.take_along_axis(hidden, index[..., None], axis=1)
        targets = jnp.take_along_axis(tokens, index + 1, axis=1)
        real = lambda i: jnp.take_along_axis(attention_mask, i, axis=1)
        valid = inside & real(index) & real(index + 1)
    return _scored(config, params, hidden, targets, valid, chunk_size, temperature)


def _scored(
    config: ModelConfig,
    params: Params,
    hidden: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    chunk_size: int,
    temperature: float,
) -> tuple[jax.Array, jax.Array]:
    """(log p(targets), entropy) [B, N] from final hidden states [B, N, H], the head applied `chunk_size`
    positions at a time (each block rematerialised in the backward pass); 0 where not `valid`."""
    b, n = targets.shape
    chunk = min(chunk_size, n)
    blocks = -(-n // chunk)
    pad = blocks * chunk - n
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [blocks, B, C, ...]: scan over position blocks; each block's logits are recomputed for the gradient.
    hidden = hidden.reshape(b, blocks, chunk, -1).swapaxes(0, 1)
    targets = targets.reshape(b, blocks, chunk).swapaxes(0, 1)
    tied = config.tie_embeddings
    head = params["embedder"]["embedding"] if tied else params["lm_head"]["kernel"]
    score = jax.checkpoint(functools.partial(_block_scores, head=head, tied=tied, temperature=float(temperature)))
    logp, entropy = jax.lax.map(lambda xs: score(xs[0], targets=xs[1]), (hidden, targets))
    logp = logp.swapaxes(0, 1).reshape(b, blocks * chunk)[:, :n]
    entropy = entropy.swapaxes(0, 1).reshape(b, blocks * chunk)[:, :n]
    return jnp.where(valid, logp, 0.0), jnp.where(valid, entropy, 0.0)


def shared_prompt_logprobs_and_entropy(
    config: ModelConfig,
    params: Params,
    prefix: jax.Array,
    prefix_mask: jax.Array,
    suffix: jax.Array,
    suffix_mask: jax.Array,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """`token_logprobs_and_entropy` of k responses to each of G prompts, each prompt computed once.

    prefix: [G, P] int32, each prompt but its last token, right padded (prefix_mask [G, P] bool; at least one
    real token a row); suffix: [G * k, S] int32, rows g * k .. g * k + k - 1 the prompt's last token followed by
    one response of prompt g, right padded (suffix_mask [G * k, S]). The prompts fill a KV cache once; the rows
    read their prompt's keys/values (repeated k times; the gradient sums over the k) and run only their S
    tokens, at rotary positions continuing their prompt's. Returns (log p(suffix[:, j+1] | prompt,
    suffix[:, :j+1]), entropy) [G * k, S - 1]: equal to scoring prompt + response as one sequence, up to float
    rounding. Traceable and differentiable.
    """
    g, p = prefix.shape
    rows, s = suffix.shape
    if rows % g:
        raise ValueError(f"{rows} response rows do not split evenly over {g} prompts.")
    k = rows // g
    prefix_mask, suffix_mask = prefix_mask.astype(bool), suffix_mask.astype(bool)
    cache = init_cache(config, g, p + s)
    # last_only: the prompts' keys/values fill the cache; their logits (and the last layer's MLP) are not needed.
    _, cache = apply_model(config, params, prefix, None, prefix_mask, cache=cache, last_only=True)
    owners = jnp.repeat(jnp.arange(g, dtype=jnp.int32), k)  # [G * k]: each row's prompt
    cache = expand_prefix(cache, owners, init_cache(config, rows, p + s))  # the gradient sums over the k copies
    start = jnp.sum(prefix_mask.astype(jnp.int32), axis=-1)[owners]  # [G * k]: each row's first position
    positions = start[:, None] + jnp.arange(s, dtype=jnp.int32)[None]
    hidden, _ = apply_model(config, params, suffix, positions, suffix_mask, cache=cache, return_hidden=True)
    valid = suffix_mask[:, :-1] & suffix_mask[:, 1:]
    return _scored(config, params, hidden[:, :-1], suffix[:, 1:], valid, chunk_size, temperature)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _token_logprobs_jit(config, params, tokens, attention_mask, chunk_size):
    return token_logprobs_and_entropy(config, params, tokens, attention_mask, chunk_size=chunk_size)[0]


def token_logprobs(
    model_config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    """Log-probability of each token given the ones before it: [batch, seq-1] float32 (jitted).

    tokens: [batch, seq] int32; attention_mask: [batch, seq] bool, False on left padding (default: all
    real). Entry j scores tokens[:, j+1]; it is 0 where token j or j+1 is padding. Equal to
    `log_softmax(forward(...))` at the target ids, computed `chunk_size` positions at a time.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    return _token_logprobs_jit(model_config, params, tokens, jnp.asarray(attention_mask, bool), chunk_size)
