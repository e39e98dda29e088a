"""The GRPO policy loss: clipped importance-weighted surrogate, KL to a reference, exact aggregation.

Per response token t of sequence i (A_i its advantage, pi the current policy, pi_old the sampling
policy, pi_ref the frozen reference):

    r_it   = exp(log pi(y_it) - log pi_old(y_it))                         importance ratio
    pg_it  = max(-A_i r_it, -A_i clip(r_it, 1 - eps_low, 1 + eps_high))   clipped surrogate (PPO)
    pg_it  = min(pg_it, -c A_i)  where A_i < 0, when dual clip c > 1 is on (Ye et al. 2020)
    kl_it  = KL estimator of pi vs pi_ref at y_it (k1, k2 or k3 by name, Schulman 2020)
    l_it   = pg_it + beta kl_it

The loss is a weighted mean L = sum_i w_i sum_t m_it l_it / sum_i c_i with per-sequence weights w_i
and normaliser shares c_i chosen by the aggregation (`aggregation_weights`):

    token_mean       w = 1,        c = |y_i|                 every token counts once (the paper's code, MemAgent)
    sequence_mean    w = 1/|y_i|,  c = 1                     token mean per sequence, then mean over sequences
                                                             (the paper's formula; each memory turn is a sequence,
                                                             so episodes with more turns weigh more)
    trajectory_mean  w = 1/T_k,    c = |y_i| / T_k           token mean over all turns of a conversation k, then
                                                             mean over conversations (every trajectory weighs the same)
    constant         w = 1,        c = L_max                 Dr. GRPO: a constant normaliser per sequence

Losses return (sum, count) = (sum_i w_i sum_t m_it l_it, sum_i c_i), so micro-batches add up exactly
(Tunix's convention): the full-batch loss is sum(sums) / sum(counts), whatever the split.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGREGATIONS = ("token_mean", "sequence_mean", "trajectory_mean", "constant")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """clip_low / clip_high: eps of the ratio clip; dual_clip: c (0 = off, else > 1); kl_coef: beta."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0
    kl_coef: float = 1e-3
    kl_estimator: str = "k3"
    aggregation: str = "sequence_mean"

    def __post_init__(self):
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"Unknown KL estimator {self.kl_estimator!r}; choose one of {KL_ESTIMATORS}.")
        if self.aggregation not in LOSS_AGGREGATIONS:
            raise ValueError(f"Unknown loss aggregation {self.aggregation!r}; choose one of {LOSS_AGGREGATIONS}.")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(
                f"Clip range needs 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}."
            )
        if self.dual_clip and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be 0 (off) or > 1, got {self.dual_clip}.")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}.")


def kl_estimate(logp: jax.Array, ref_logp: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi, with d = log pi_ref - log pi:

    k1 = -d (unbiased, high variance), k2 = d^2 / 2 (biased, low variance),
    k3 = exp(d) - d - 1 (unbiased, low variance, >= 0; the paper's "low_var_kl").
    """
    d = ref_logp - logp
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * jnp.square(d)
    if estimator == "k3":
        return jnp.exp(d) - d - 1.0
    raise ValueError(f"Unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}.")


def clipped_surrogate(
    logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, config: LossConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (pg loss, ratio, clipped?) for logp, old_logp: [..., T] and advantages broadcastable to them."""
    ratio = jnp.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high)
    loss = jnp.maximum(unclipped, clipped)
    if config.dual_clip:
        loss = jnp.where(advantages < 0, jnp.minimum(loss, -config.dual_clip * advantages), loss)
    return loss, ratio, clipped > unclipped


def grpo_token_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token l = pg + beta * kl ([B, T]) and per-token diagnostics (ratio, clipped, kl).

    logp, old_logp, ref_logp: [B, T] log-probs of the response tokens; advantages: [B].
    """
    pg, ratio, clipped = clipped_surrogate(logp, old_logp, advantages[:, None], config)
    loss = pg
    kl = jnp.zeros_like(logp)
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, config.kl_estimator)
        loss = loss + config.kl_coef * kl
    return loss, {"ratio": ratio, "clipped": clipped.astype(jnp.float32), "kl": kl, "pg": pg}


def aggregate(per_token: jax.Array, mask: jax.Array, weights: jax.Array) -> jax.Array:
    """sum_i w_i sum_t m_it x_it for per_token, mask: [B, T] and weights: [B]."""
    return jnp.sum(per_token * mask * weights[:, None])


def aggregation_weights(
    aggregation: str, lengths: np.ndarray, conversations: np.ndarray, constant_length: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence (w_i, c_i) of the module docstring, from response lengths |y_i| (loss tokens) [n] and
    conversation ids [n]. `constant_length` is L_max of the "constant" aggregation. Host side (NumPy)."""
    lengths = np.asarray(lengths, np.float64)
    if aggregation == "token_mean":
        return np.ones_like(lengths), lengths
    if aggregation == "sequence_mean":
        return 1.0 / np.maximum(lengths, 1.0), (lengths > 0).astype(np.float64)
    if aggregation == "trajectory_mean":
        conversations = np.asarray(conversations)
        _, inverse = np.unique(conversations, return_inverse=True)
        totals = np.bincount(inverse, weights=lengths)[inverse]
        return 1.0 / np.maximum(totals, 1.0), lengths / np.maximum(totals, 1.0)
    if aggregation == "constant":
        if constant_length < 1:
            raise ValueError(f"The 'constant' aggregation needs constant_length >= 1, got {constant_length}.")
        return np.ones_like(lengths), np.full_like(lengths, float(constant_length))
    raise ValueError(f"Unknown loss aggregation {aggregation!r}; choose one of {LOSS_AGGREGATIONS}.")
