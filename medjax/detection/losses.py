"""Per-anchor detection losses, masked by the matcher, jit-able and finite with no boxes.

Anchor labels follow `medjax.detection.matching`: `matched >= 0` positive (its
box's class is the target), `BACKGROUND` negative (all classes 0), `IGNORE`
neither. Classification is one sigmoid per foreground class (RetinaNet).

* `sigmoid_focal_loss` (Lin et al. 2017): `-alpha_t (1 - p_t)^gamma log p_t`,
  summed over positive and negative anchors and divided by max(1, #positives).
* `sampled_bce_loss`: binary cross entropy over the anchors that hard-negative
  sampling chose (nnDetection: `HardNegativeSampler` + BCE), averaged over them.
* `giou_loss` (Rezatofighi et al. 2019): `1 - GIoU(decoded box, target box)`
  averaged over positive anchors (nnDetection's default regression loss).
* `smooth_l1_loss` (Girshick 2015): on the encoded deltas, `beta` = 1/9
  (Detectron's RetinaNet), summed over coordinates, averaged over positives.

Each returns a scalar; with no positive anchor the regression losses are 0 and
the classification losses are still defined (all anchors negative).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from medjax.detection import boxes as box_ops


def class_targets(matched: jax.Array, gt_classes: jax.Array, num_classes: int) -> jax.Array:
  """`(..., A, K)` one-hot targets: the matched box's class for positives, zeros otherwise.

  Args:
    matched: `(..., A)` matcher output; gt_classes: `(..., M)` 0-based classes.
  """
  index = jnp.maximum(matched, 0)
  cls = jnp.take_along_axis(gt_classes, index, axis=-1)
  onehot = jax.nn.one_hot(cls, num_classes, dtype=jnp.float32)
  return jnp.where((matched >= 0)[..., None], onehot, 0.0)


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array, num_pos, *,
                       alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
  """Focal loss summed over the anchors in `mask` `(..., A)` and classes, / max(1, num_pos).

  Args:
    logits, targets: `(..., A, K)`.
  """
  logits = logits.astype(jnp.float32)
  ce = optax.sigmoid_binary_cross_entropy(logits, targets)
  p = jax.nn.sigmoid(logits)
  p_t = targets * p + (1 - targets) * (1 - p)
  alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
  loss = alpha_t * (1 - p_t) ** gamma * ce
  return jnp.sum(loss * mask[..., None]) / jnp.maximum(num_pos, 1)


def sampled_bce_loss(logits: jax.Array, targets: jax.Array, sampled: jax.Array) -> jax.Array:
  """Mean binary cross entropy (summed over classes) over the `sampled` `(..., A)` anchors."""
  ce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets)
  return jnp.sum(jnp.sum(ce, -1) * sampled) / jnp.maximum(jnp.sum(sampled), 1)


def giou_loss(pred_boxes: jax.Array, target_boxes: jax.Array, positive: jax.Array) -> jax.Array:
  """Mean `1 - GIoU` over `positive` `(..., A)` anchors of `(..., A, 2n)` boxes."""
  n2 = pred_boxes.shape[-1]
  giou = box_ops.aligned_box_giou(pred_boxes.reshape(-1, n2).astype(jnp.float32),
                                  target_boxes.reshape(-1, n2).astype(jnp.float32))
  weight = positive.reshape(-1).astype(jnp.float32)
  return jnp.sum((1.0 - giou) * weight) / jnp.maximum(jnp.sum(weight), 1)


def smooth_l1_loss(pred_deltas: jax.Array, target_deltas: jax.Array, positive: jax.Array, *,
                   beta: float = 1.0 / 9) -> jax.Array:
  """Smooth-L1 on deltas `(..., A, 2n)`, summed over coordinates, averaged over positives."""
  diff = jnp.abs(pred_deltas.astype(jnp.float32) - target_deltas)
  loss = jnp.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta)
  weight = positive.astype(jnp.float32)
  return jnp.sum(jnp.sum(loss, -1) * weight) / jnp.maximum(jnp.sum(weight), 1)
