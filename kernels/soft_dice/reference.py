"""Pure-JAX soft-Dice statistics: the readable definition, and the XLA path.

Soft Dice (Milletari et al., "V-Net", 3DV 2016) turns the overlap score
`2|T∩P| / (|T| + |P|)` into a differentiable loss by replacing the binary prediction with
class probabilities. Every soft-Dice variant (plain, squared denominators, generalized
Dice, Tversky) is built from three per-(case, class) sums, computed here:

    intersection[n, k] = Σ_s p[n, s, k] · t[n, s, k]
    pred_sum[n, k]     = Σ_s p[n, s, k]          (Σ_s p² with `squared=True`, as in V-Net)
    target_sum[n, k]   = Σ_s t[n, s, k]

with p = softmax over classes (or a per-channel sigmoid) computed in float32 and
t = one_hot(labels, K).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

ACTIVATIONS = ("softmax", "sigmoid")


def check_args(logits: jax.Array, labels: jax.Array, activation: str) -> None:
  """Raises ValueError with a one-line message for inputs the kernels cannot take."""
  if activation not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
  if logits.ndim < 2:
    raise ValueError(f"logits must be (N, *spatial, K), got shape {logits.shape}")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f"labels must have shape {logits.shape[:-1]} (logits without the class axis), "
        f"got {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be floating point, got {logits.dtype}")


def probabilities(logits: jax.Array, activation: str = "softmax") -> jax.Array:
  """Class probabilities in float32: softmax over the last axis or elementwise sigmoid."""
  x = logits.astype(jnp.float32)
  if activation == "softmax":
    return jax.nn.softmax(x, axis=-1)
  return jax.nn.sigmoid(x)


def soft_dice_stats(logits: jax.Array, labels: jax.Array, *, squared: bool = False,
                    activation: str = "softmax") -> tuple[jax.Array, jax.Array, jax.Array]:
  """Soft-Dice statistics (Milletari 2016) per case and class, in pure JAX.

  Args:
    logits: (N, *S, K) float32 or bfloat16, any spatial rank.
    labels: (N, *S) integers in [0, K); other values count for no class.
    squared: sum p² instead of p in `pred_sum` (V-Net's squared denominators).
    activation: "softmax" over K, or "sigmoid" per channel.

  Returns:
    (intersection, pred_sum, target_sum), each float32 (N, K).
  """
  check_args(logits, labels, activation)
  n, k = logits.shape[0], logits.shape[-1]
  p = probabilities(logits, activation).reshape(n, -1, k)
  t = jax.nn.one_hot(labels.reshape(n, -1), k, dtype=jnp.float32)
  intersection = jnp.sum(p * t, axis=1)
  pred_sum = jnp.sum(p * p if squared else p, axis=1)
  target_sum = jnp.sum(t, axis=1)
  return intersection, pred_sum, target_sum


def soft_dice_stats_bwd(logits: jax.Array, labels: jax.Array, g_intersection: jax.Array,
                        g_pred_sum: jax.Array, *, squared: bool = False,
                        activation: str = "softmax") -> jax.Array:
  """Gradient w.r.t. logits of `soft_dice_stats`, written out (what the kernels fuse).

  With g[s, k] = g_intersection[n, k]·t + g_pred_sum[n, k]·(2p if squared else 1):
  softmax: dlogits = p ⊙ (g − Σ_k p_k g_k);  sigmoid: dlogits = g ⊙ p ⊙ (1 − p).
  `target_sum` does not depend on the logits.

  Args:
    logits: (N, *S, K); labels: (N, *S); g_intersection, g_pred_sum: (N, K).

  Returns:
    (N, *S, K) in the dtype of `logits`.
  """
  n, k = logits.shape[0], logits.shape[-1]
  p = probabilities(logits, activation).reshape(n, -1, k)
  t = jax.nn.one_hot(labels.reshape(n, -1), k, dtype=jnp.float32)
  gi = g_intersection.astype(jnp.float32)[:, None, :]
  gp = g_pred_sum.astype(jnp.float32)[:, None, :]
  g = gi * t + gp * (2.0 * p if squared else 1.0)
  if activation == "softmax":
    dx = p * (g - jnp.sum(p * g, axis=-1, keepdims=True))
  else:
    dx = g * p * (1.0 - p)
  return dx.reshape(logits.shape).astype(logits.dtype)
