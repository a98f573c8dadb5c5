"""The training objective of a RetinaNet / Retina U-Net: match, sample, classify, regress, segment.

`detection_loss` combines, per batch (Jaeger et al. 2018; nnDetection's
`RetinaUNet` loss, Baumgartner et al. 2021):

1. matching every anchor to the padded ground truth of its case (`atss` by
   default, or `iou` thresholds), vmapped over the batch;
2. classification: sigmoid focal loss over all non-ignored anchors (`focal`,
   RetinaNet) or binary cross entropy over hard-negative-sampled anchors
   (`bce_hnm`, nnDetection's default);
3. box regression of the positive anchors: GIoU of the decoded boxes (`giou`,
   nnDetection) or smooth-L1 of the deltas (`smooth_l1`, RetinaNet);
4. with a segmentation head: `medjax.losses.dice_ce` of `seg_logits` against
   the semantic map made from the instance map (instance i -> class of box i + 1,
   0 background), the Retina U-Net's extra supervision.

A case without boxes (`num_boxes == 0`) is a normal case: all its anchors are
negatives, its regression term is 0, and the loss stays finite.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from medjax import losses as seg_losses
from medjax.detection import coder, matching
from medjax.detection import losses as det_losses
from medjax.detection.anchors import AnchorSet

MATCHERS = ("atss", "iou")
CLASSIFICATION_LOSSES = ("bce_hnm", "focal")
REGRESSION_LOSSES = ("giou", "smooth_l1")


@dataclasses.dataclass(frozen=True)
class DetectionLossConfig:
  """Choices and weights of `detection_loss` (hashable: pass it as a static argument).

  Attributes:
    matcher: "atss" (Zhang 2020; `atss_candidates` per level) or "iou"
      (`fg_iou` / `bg_iou`, low-quality matches allowed).
    classification: "bce_hnm" (nnDetection: `batch_size_per_image`,
      `positive_fraction`, `pool_size`, `min_neg`) or "focal" (`focal_alpha`,
      `focal_gamma`).
    regression: "giou" or "smooth_l1".
    coder_weights: `medjax.detection.coder` weights (None: all 1).
    classification_weight, regression_weight, segmentation_weight: term weights.
  """
  matcher: str = "atss"
  atss_candidates: int = 4
  fg_iou: float = 0.5
  bg_iou: float = 0.4
  classification: str = "bce_hnm"
  batch_size_per_image: int = 32
  positive_fraction: float = 0.33
  pool_size: float = 20
  min_neg: int = 1
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  regression: str = "giou"
  coder_weights: Optional[Sequence[float]] = None
  classification_weight: float = 1.0
  regression_weight: float = 1.0
  segmentation_weight: float = 1.0

  def __post_init__(self):
    for field, value, options in (("matcher", self.matcher, MATCHERS),
                                  ("classification", self.classification, CLASSIFICATION_LOSSES),
                                  ("regression", self.regression, REGRESSION_LOSSES)):
      if value not in options:
        raise ValueError(f"detection loss {field}={value!r}: expected one of {', '.join(options)}")
    if self.coder_weights is not None:
      object.__setattr__(self, "coder_weights", tuple(float(w) for w in self.coder_weights))


def match_batch(anchors: AnchorSet, gt_boxes: jax.Array, num_boxes: jax.Array,
                config: DetectionLossConfig) -> jax.Array:
  """`(N, A)` matcher output for a batch of padded ground truth `(N, M, 2n)`, `(N,)`."""
  anchor_boxes = jnp.asarray(anchors.boxes)
  if config.matcher == "atss":
    match_one = lambda boxes, count: matching.atss_matcher(
        boxes, count, anchor_boxes, per_level=anchors.per_level,
        per_location=anchors.per_location, num_candidates=config.atss_candidates)
  else:
    match_one = lambda boxes, count: matching.iou_matcher(
        boxes, count, anchor_boxes, fg_iou=config.fg_iou, bg_iou=config.bg_iou)
  return jax.vmap(match_one)(gt_boxes.astype(jnp.float32), num_boxes)


def semantic_from_instances(instances: jax.Array, gt_classes: jax.Array) -> jax.Array:
  """`(N, *S)` labels: 0 background, class of box i + 1 where the instance map is i (1-based)."""
  n = instances.shape[0]
  flat = instances.reshape(n, -1).astype(jnp.int32)
  cls = jnp.take_along_axis(gt_classes.astype(jnp.int32), jnp.maximum(flat - 1, 0), axis=1)
  return jnp.where(flat > 0, cls + 1, 0).reshape(instances.shape)


def detection_loss(outputs: dict, anchors: AnchorSet, gt: dict, config: DetectionLossConfig,
                   *, rng: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
  """The batch's detection loss and its parts.

  Args:
    outputs: the model's `{"class_logits": (N, A, K), "box_deltas": (N, A, 2n)
      [, "seg_logits": (N, *S, K + 1)]}`.
    anchors: `AnchorSet` of the input shape (`medjax.models.anchors_for`).
    gt: `{"boxes": (N, M, 2n), "classes": (N, M), "num_boxes": (N,)
      [, "instances": (N, *S)]}` (the instance map is needed with `seg_logits`).
    config: `DetectionLossConfig`.
    rng: PRNG key for hard-negative sampling (required with "bce_hnm").
  Returns:
    `(loss, {"loss/classification", "loss/regression", "loss/segmentation",
    "num_positive"})`.
  """
  if config.classification == "bce_hnm" and rng is None:
    raise ValueError("detection loss classification='bce_hnm' needs an rng for sampling")
  class_logits = outputs["class_logits"].astype(jnp.float32)
  box_deltas = outputs["box_deltas"].astype(jnp.float32)
  n, num_anchors, num_classes = class_logits.shape
  gt_boxes = jnp.asarray(gt["boxes"], jnp.float32)
  gt_classes = jnp.asarray(gt["classes"], jnp.int32)
  num_boxes = jnp.asarray(gt["num_boxes"], jnp.int32).reshape(n)
  matched = match_batch(anchors, gt_boxes, num_boxes, config)  # (N, A)
  positive = matched >= 0
  num_pos = jnp.sum(positive)
  targets = det_losses.class_targets(matched, gt_classes, num_classes)

  if config.classification == "focal":
    cls_loss = det_losses.sigmoid_focal_loss(
        class_logits, targets, matched != matching.IGNORE, num_pos,
        alpha=config.focal_alpha, gamma=config.focal_gamma)
  else:
    fg_probs = jax.nn.sigmoid(jax.lax.stop_gradient(class_logits)).max(-1)
    sample = lambda m, p, key: matching.hard_negative_masks(
        m, p, key, batch_size_per_image=config.batch_size_per_image,
        positive_fraction=config.positive_fraction, pool_size=config.pool_size,
        min_neg=config.min_neg)
    pos_mask, neg_mask = jax.vmap(sample)(matched, fg_probs, jax.random.split(rng, n))
    cls_loss = det_losses.sampled_bce_loss(class_logits, targets, pos_mask | neg_mask)

  # matched ground-truth box per anchor; padded rows become a unit box so that
  # encoding never takes log(0) (those anchors are masked out anyway)
  n2 = gt_boxes.shape[-1]
  unit = jnp.concatenate([jnp.zeros((n2 // 2,)), jnp.ones((n2 // 2,))])
  real = (jnp.arange(gt_boxes.shape[1])[None] < num_boxes[:, None])[..., None]
  safe_boxes = jnp.where(real, gt_boxes, unit)
  target_boxes = jnp.take_along_axis(safe_boxes, jnp.maximum(matched, 0)[..., None], axis=1)
  anchor_boxes = jnp.broadcast_to(jnp.asarray(anchors.boxes), (n, num_anchors, n2))
  if config.regression == "giou":
    pred_boxes = coder.decode_boxes(anchor_boxes, box_deltas, config.coder_weights)
    reg_loss = det_losses.giou_loss(pred_boxes, target_boxes, positive)
  else:
    target_deltas = coder.encode_boxes(anchor_boxes, target_boxes, config.coder_weights)
    target_deltas = jnp.where(positive[..., None], target_deltas, 0.0)
    reg_loss = det_losses.smooth_l1_loss(box_deltas, target_deltas, positive)

  seg_loss = jnp.zeros((), jnp.float32)
  if "seg_logits" in outputs and outputs["seg_logits"] is not None:
    if "instances" not in gt:
      raise ValueError("detection loss: the model has a segmentation head but gt has no "
                       "'instances' map")
    labels = semantic_from_instances(jnp.asarray(gt["instances"]), gt_classes)
    seg_loss = seg_losses.dice_ce(outputs["seg_logits"].astype(jnp.float32), labels)

  total = (config.classification_weight * cls_loss + config.regression_weight * reg_loss
           + config.segmentation_weight * seg_loss)
  return total, {"loss/classification": cls_loss, "loss/regression": reg_loss,
                 "loss/segmentation": seg_loss, "num_positive": num_pos}
