"""Anchor <-> ground-truth matching and hard-negative sampling, fixed-shape and jit-able.

Ground truth comes padded: `gt_boxes (M, 2n)` of which the first `num_boxes`
rows are real (`num_boxes` may be 0: every anchor is then background). A
matcher returns, per anchor, the index of its ground-truth box (>= 0),
`BACKGROUND` (-1) or `IGNORE` (-2, neither positive nor negative).

* `iou_matcher`: Faster R-CNN / RetinaNet thresholds (Ren et al. 2015; Lin et
  al. 2017): IoU >= `fg_iou` -> the best box, < `bg_iou` -> background, in
  between -> ignored; with `allow_low_quality` each box also gets the anchors of
  its highest IoU (torchvision's `Matcher`, nnDetection's `IoUMatcher`).
* `atss_matcher`: Adaptive Training Sample Selection (Zhang et al. 2020): per
  box and per level the `num_candidates * per_location` anchors closest by
  centre distance are candidates; those with IoU >= mean + std of the
  candidates' IoUs (std with Bessel's correction, as torch) whose centre lies
  inside the box (by more than 0.01 voxel) are positive; an anchor claimed by
  several boxes goes to the one of highest IoU (nnDetection's `ATSSMatcher`,
  MIC-DKFZ/nnDetection `nndet/core/boxes/matcher/atss.py`).
* `hard_negative_masks`: nnDetection's `HardNegativeSampler`
  (`nndet/core/boxes/sampler.py`): `min(#pos, batch_size_per_image *
  positive_fraction)` positives at random, and `min(#neg, max(min_neg,
  max(1, num_pos) * |1 - 1 / positive_fraction|))` negatives drawn at random
  from the pool of the `pool_size`-times-as-many negatives with the highest
  foreground probability.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from medjax.detection import boxes as box_ops

BACKGROUND = -1
IGNORE = -2
_NEG_INF = -1e4


def _valid_rows(gt_boxes: jax.Array, num_boxes) -> jax.Array:
  return jnp.arange(gt_boxes.shape[0]) < num_boxes


def iou_matcher(gt_boxes: jax.Array, num_boxes, anchors: jax.Array, *, fg_iou: float = 0.5,
                bg_iou: float = 0.4, allow_low_quality: bool = True) -> jax.Array:
  """Matches anchors to boxes by IoU thresholds.

  Args:
    gt_boxes: `(M, 2n)` padded ground truth; num_boxes: the real rows.
    anchors: `(A, 2n)`.
  Returns:
    `(A,)` int32: box index, `BACKGROUND` or `IGNORE`.
  """
  valid = _valid_rows(gt_boxes, num_boxes)
  iou = jnp.where(valid[:, None], box_ops.box_iou(gt_boxes, jnp.asarray(anchors)), _NEG_INF)
  best = jnp.max(iou, axis=0)
  matched = jnp.argmax(iou, axis=0).astype(jnp.int32)
  result = jnp.where(best >= fg_iou, matched,
                     jnp.where(best < bg_iou, BACKGROUND, IGNORE)).astype(jnp.int32)
  if allow_low_quality:
    best_per_gt = jnp.max(iou, axis=1, keepdims=True)  # (M, 1)
    is_best = (iou == best_per_gt) & valid[:, None] & (best_per_gt > 0)
    result = jnp.where(jnp.any(is_best, axis=0), matched, result)
  return jnp.where(jnp.any(valid), result, BACKGROUND).astype(jnp.int32)


def atss_matcher(gt_boxes: jax.Array, num_boxes, anchors: jax.Array, *,
                 per_level: Sequence[int], per_location: Sequence[int],
                 num_candidates: int = 4, center_in_gt: bool = True) -> jax.Array:
  """Matches anchors to boxes by ATSS (Zhang et al. 2020).

  Args:
    gt_boxes: `(M, 2n)` padded ground truth; num_boxes: the real rows.
    anchors: `(A, 2n)` concatenated over levels.
    per_level: anchors per level (static); per_location: anchor shapes per cell.
    num_candidates: candidate cells per level (nnDetection: 4).
  Returns:
    `(A,)` int32: box index or `BACKGROUND`.
  """
  anchors = jnp.asarray(anchors)
  gt_boxes = jnp.asarray(gt_boxes, anchors.dtype)
  valid = _valid_rows(gt_boxes, num_boxes)
  num_gt, num_anchors = gt_boxes.shape[0], anchors.shape[0]
  distances = box_ops.box_center_distance(gt_boxes, anchors)  # (M, A)
  candidates = []
  start = 0
  for count, loc in zip(per_level, per_location):
    k = min(num_candidates * loc, count)
    _, idx = jax.lax.top_k(-distances[:, start:start + count], k)
    candidates.append(idx + start)
    start += count
  candidates = jnp.concatenate(candidates, axis=1)  # (M, C)
  iou = box_ops.box_iou(gt_boxes, anchors)  # (M, A)
  cand_iou = jnp.take_along_axis(iou, candidates, axis=1)
  c = cand_iou.shape[1]
  mean = jnp.mean(cand_iou, axis=1, keepdims=True)
  std = jnp.sqrt(jnp.sum((cand_iou - mean) ** 2, axis=1, keepdims=True) / max(c - 1, 1))
  positive = cand_iou >= mean + std
  if center_in_gt:
    centers = (anchors[:, :anchors.shape[1] // 2] + anchors[:, anchors.shape[1] // 2:]) / 2
    cand_centers = centers[candidates]  # (M, C, n)
    lo, hi = box_ops.box_lows_highs(gt_boxes)
    margin = jnp.minimum(cand_centers - lo[:, None], hi[:, None] - cand_centers).min(-1)
    positive &= margin > 0.01
  positive &= valid[:, None]
  claims = jnp.full((num_gt, num_anchors), _NEG_INF, iou.dtype)
  rows = jnp.broadcast_to(jnp.arange(num_gt)[:, None], candidates.shape)
  claims = claims.at[rows, candidates].max(jnp.where(positive, cand_iou, _NEG_INF))
  best = jnp.max(claims, axis=0)
  matched = jnp.argmax(claims, axis=0).astype(jnp.int32)
  return jnp.where(best > _NEG_INF, matched, BACKGROUND).astype(jnp.int32)


def _choose(candidates: jax.Array, valid: jax.Array, count, rng: jax.Array,
            size: int) -> jax.Array:
  """A mask over `size` anchors: `count` of the `valid` entries of `candidates` (anchor
  indices), chosen uniformly at random."""
  priority = jnp.where(valid, jax.random.uniform(rng, candidates.shape), -1.0)
  rank = jnp.argsort(jnp.argsort(-priority))
  chosen = valid & (rank < count)
  return jnp.zeros((size,), bool).at[candidates].max(chosen)


def hard_negative_masks(matched: jax.Array, fg_probs: jax.Array, rng: jax.Array, *,
                        batch_size_per_image: int = 32, positive_fraction: float = 0.33,
                        pool_size: float = 20, min_neg: int = 1) -> tuple[jax.Array, jax.Array]:
  """Positive and hard-negative anchors of one image, as masks (nnDetection's sampler).

  The counts are bounded by the (static) sampler settings, so only the
  `lax.top_k` candidates are sorted, not all anchors.

  Args:
    matched: `(A,)` matcher output (>= 0 positive, `BACKGROUND` negative).
    fg_probs: `(A,)` highest foreground probability per anchor (no gradient needed).
    rng: a PRNG key.
  Returns:
    `(positive (A,), negative (A,))` bool masks.
  """
  num_anchors = matched.shape[0]
  pos_rng, neg_rng, order_rng = jax.random.split(rng, 3)
  positive = matched >= 0
  negative = matched == BACKGROUND
  max_pos = int(batch_size_per_image * positive_fraction)
  ratio = abs(1.0 - 1.0 / positive_fraction)
  max_neg = max(int(max(1, max_pos) * ratio), min_neg)
  max_pool = min(num_anchors, max(1, int(max_neg * pool_size)))

  # positives: max_pos random ones (random keys, largest first, over positives only)
  num_pos = jnp.minimum(jnp.sum(positive), max_pos)
  keys = jnp.where(positive, jax.random.uniform(order_rng, (num_anchors,)), -1.0)
  _, pos_candidates = jax.lax.top_k(keys, min(max(max_pos, 1), num_anchors))
  pos_mask = _choose(pos_candidates, positive[pos_candidates], num_pos, pos_rng, num_anchors)

  # negatives: the pool of the hardest (highest foreground probability), then at random
  num_neg = jnp.floor(jnp.maximum(num_pos, 1) * ratio).astype(jnp.int32)
  num_neg = jnp.minimum(jnp.sum(negative), jnp.maximum(num_neg, min_neg))
  pool = jnp.floor(num_neg * pool_size).astype(jnp.int32)
  hardness = jnp.where(negative, jax.lax.stop_gradient(fg_probs).astype(jnp.float32), -jnp.inf)
  _, hard = jax.lax.top_k(hardness, max_pool)  # hardest first
  in_pool = negative[hard] & (jnp.arange(max_pool) < pool)
  neg_mask = _choose(hard, in_pool, num_neg, neg_rng, num_anchors)
  return pos_mask, neg_mask
