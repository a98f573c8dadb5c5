"""Pure-JAX soft-Dice statistics: the readable definition, and the XLA path.

Soft Dice (Milletari et al., "V-Net", 3DV 2016) turns the overlap score
`2|T∩P| / (|T| + |P|)` into a differentiable loss by replacing the binary prediction with
class probabilities. Every soft-Dice variant (plain, squared denominators, generalized
Dice, Tversky) is built from three per-(case, class) sums, computed here:

    intersection[n, k] = Σ_s p[n, s, k] · t[n, s, k]
    pred_sum[n, k]     = Σ_s p[n, s, k]          (Σ_s p² with `squared=True`, as in V-Net)
    target_sum[n, k]   = Σ_s t[n, s, k]

with p = softmax over classes (or a per-channel sigmoid, or the inputs themselves when
they already are probabilities) computed in float32 (float64 for float64 inputs) and
t = one_hot(labels, K). This is the one plain-JAX definition: `medjax.losses` and the
XLA path of `api.soft_dice_stats` both use it.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

ACTIVATIONS = ("softmax", "sigmoid", None)  # None: the inputs already are probabilities


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


def compute_dtype(logits: jax.Array):
  """float32 for 16/32-bit logits; float64 logits (x64 mode) stay float64."""
  return jnp.promote_types(logits.dtype, jnp.float32)


def probabilities(logits: jax.Array, activation: Optional[str] = "softmax") -> jax.Array:
  """Class probabilities in `compute_dtype`: softmax over the last axis, elementwise
  sigmoid, or the inputs unchanged (`activation=None`)."""
  x = logits.astype(compute_dtype(logits))
  if activation == "softmax":
    return jax.nn.softmax(x, axis=-1)
  if activation == "sigmoid":
    return jax.nn.sigmoid(x)
  return x


def soft_dice_stats(logits: jax.Array, labels: jax.Array, *, squared: bool = False,
                    activation: Optional[str] = "softmax") -> tuple[jax.Array, jax.Array, jax.Array]:
  """Soft-Dice statistics (Milletari 2016) per case and class, in pure JAX.

  Args:
    logits: (N, *S, K) float32 or bfloat16, any spatial rank.
    labels: (N, *S) integers in [0, K); other values count for no class.
    squared: sum p² instead of p in `pred_sum` (V-Net's squared denominators).
    activation: "softmax" over K, "sigmoid" per channel, or None (`logits` already
      are probabilities).

  Returns:
    (intersection, pred_sum, target_sum), each (N, K) in `compute_dtype(logits)`.
  """
  check_args(logits, labels, activation)
  n, k = logits.shape[0], logits.shape[-1]
  p = probabilities(logits, activation).reshape(n, -1, k)
  t = jax.nn.one_hot(labels.reshape(n, -1), k, dtype=p.dtype)
  intersection = jnp.sum(p * t, axis=1)
  pred_sum = jnp.sum(p * p if squared else p, axis=1)
  target_sum = jnp.sum(t, axis=1)
  return intersection, pred_sum, target_sum


def soft_dice_stats_bwd(logits: jax.Array, labels: jax.Array, g_intersection: jax.Array,
                        g_pred_sum: jax.Array, *, squared: bool = False,
                        activation: Optional[str] = "softmax") -> jax.Array:
  """Gradient w.r.t. logits of `soft_dice_stats`, written out (what the kernels fuse).

  With g[s, k] = g_intersection[n, k]·t + g_pred_sum[n, k]·(2p if squared else 1):
  softmax: dlogits = p ⊙ (g − Σ_k p_k g_k);  sigmoid: dlogits = g ⊙ p ⊙ (1 − p);
  None: dlogits = g.
  `target_sum` does not depend on the logits.

  Args:
    logits: (N, *S, K); labels: (N, *S); g_intersection, g_pred_sum: (N, K).

  Returns:
    (N, *S, K) in the dtype of `logits`.
  """
  n, k = logits.shape[0], logits.shape[-1]
  p = probabilities(logits, activation).reshape(n, -1, k)
  t = jax.nn.one_hot(labels.reshape(n, -1), k, dtype=p.dtype)
  gi = g_intersection.astype(p.dtype)[:, None, :]
  gp = g_pred_sum.astype(p.dtype)[:, None, :]
  g = gi * t + gp * (2.0 * p if squared else 1.0)
  if activation == "softmax":
    dx = p * (g - jnp.sum(p * g, axis=-1, keepdims=True))
  elif activation == "sigmoid":
    dx = g * p * (1.0 - p)
  else:
    dx = g
  return dx.reshape(logits.shape).astype(logits.dtype)
