"""Weighted box clustering (WBC): one box per object from overlapping predictions.

Jaeger et al. 2018 (Retina U-Net, medicaldetectiontoolkit
`predictor.py::weighted_box_clustering`), as nnDetection uses it to merge the
predictions of overlapping sliding windows, mirror test-time augmentation and
ensemble members. Like NMS, the highest-scoring remaining box opens a cluster
with every remaining box of IoU > `iou_threshold`; unlike NMS the cluster's
box and score are averages instead of the top box's:

  w_i     = IoU(i, top) * volume_i * patch_center_factor_i
  score   = sum(w_i s_i) / (sum(w_i) + n_missing * mean(w_i))
  box     = sum(w_i s_i box_i) / sum(w_i s_i)
  n_missing = max(0, n_expected * mean(n_overlaps_i) - #distinct patches in the cluster)

`n_expected` is the number of predictions expected per window position (mirror
variants x ensemble members), `n_overlaps_i` how many windows cover box i (the
mean over its voxels), so a cluster seen by only some of the windows that
looked at it is down-weighted. `patch_center_factor` down-weights boxes near a
window's border, where the network saw less context: per axis the Gaussian
`exp(-(c - p/2)^2 / (2 (0.8 p/2)^2))` of the box centre c within a window of
size p, averaged over axes. Clusters scoring <= `min_score` are dropped.
Volumes use this package's half-open boxes (medicaldetectiontoolkit adds one
voxel per axis). NumPy: it runs once per case on the host.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from medjax.detection import boxes as box_ops


def patch_center_factor(boxes_in_window: np.ndarray, window_shape: Sequence[int]) -> np.ndarray:
  """`(B,)` weight in (0, 1] of boxes given in a window's coordinates: 1 at the window centre.

  medicaldetectiontoolkit's `box_patch_center_factor`: the mean over axes of a
  Gaussian in the box centre, centred on the window centre p/2 with sigma 0.8 p/2.
  """
  boxes_in_window = np.asarray(boxes_in_window, np.float64)
  lo, hi = box_ops.box_lows_highs(boxes_in_window)
  half = np.asarray(window_shape, np.float64) / 2
  sigma = 0.8 * half
  center = (lo + hi) / 2
  return np.mean(np.exp(-((center - half) ** 2) / (2 * sigma ** 2)), axis=-1)


def mean_over_boxes(volume: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """`(B,)` mean of `volume` over each box's voxels (boxes rounded outwards, clipped).

  A summed-volume table makes it O(1) per box; used for `n_overlaps` from the
  count of windows covering each voxel.
  """
  volume = np.asarray(volume, np.float64)
  n = volume.ndim
  table = np.pad(volume, [(1, 0)] * n)
  for axis in range(n):
    table = np.cumsum(table, axis=axis)
  boxes = np.asarray(boxes, np.float64)
  lo = np.clip(np.floor(boxes[:, :n]), 0, volume.shape).astype(np.int64)
  hi = np.clip(np.ceil(boxes[:, n:]), 0, volume.shape).astype(np.int64)
  hi = np.maximum(hi, lo)
  total = np.zeros(len(boxes))
  for corner in range(2 ** n):
    pick = [(corner >> axis) & 1 for axis in range(n)]
    index = tuple(np.where(p, hi[:, axis], lo[:, axis]) for axis, p in enumerate(pick))
    sign = (-1) ** (n - sum(pick))
    total += sign * table[index]
  count = np.prod(hi - lo, axis=1)
  return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def weighted_box_clustering(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float,
                            patch_center_factors: Optional[np.ndarray] = None,
                            n_overlaps: Optional[np.ndarray] = None,
                            patch_ids: Optional[np.ndarray] = None, n_expected: float = 1.0,
                            classes: Optional[np.ndarray] = None, min_score: float = 0.01
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Clusters boxes of one case (see the module docstring).

  Args:
    boxes: `(B, 2n)` boxes in the case's voxel coordinates; scores: `(B,)`.
    iou_threshold: boxes with IoU > this with a cluster's top box join it.
    patch_center_factors: `(B,)` (default 1); see `patch_center_factor`.
    n_overlaps: `(B,)` windows covering each box (default 1); see `mean_over_boxes`.
    patch_ids: `(B,)` id of the window (and augmentation / member) that
      predicted each box (default: every box its own).
    n_expected: predictions expected per window position (mirrors x members).
    classes: optional `(B,)`: cluster each class separately.
    min_score: clusters at or below this score are dropped.
  Returns:
    `(boxes (K, 2n), scores (K,), classes (K,))` by decreasing score.
  """
  boxes = np.asarray(boxes, np.float64)
  scores = np.asarray(scores, np.float64)
  num = len(scores)
  width = boxes.shape[1] if boxes.ndim == 2 else 6
  factors = np.ones(num) if patch_center_factors is None else np.asarray(patch_center_factors,
                                                                         np.float64)
  overlaps = np.ones(num) if n_overlaps is None else np.asarray(n_overlaps, np.float64)
  ids = np.arange(num) if patch_ids is None else np.asarray(patch_ids)
  labels = np.zeros(num, np.int64) if classes is None else np.asarray(classes, np.int64)
  out_boxes, out_scores, out_classes = [], [], []
  volumes = box_ops.box_volume(boxes)
  for label in np.unique(labels):
    members = np.nonzero(labels == label)[0]
    order = members[np.argsort(-scores[members], kind="stable")]
    while order.size:
      top = order[0]
      iou = box_ops.box_iou(boxes[top:top + 1], boxes[order])[0]
      iou[0] = 1.0
      matched = iou > iou_threshold
      cluster = order[matched]
      weights = iou[matched] * volumes[cluster] * factors[cluster]
      weighted_scores = weights * scores[cluster]
      expected = n_expected * np.mean(overlaps[cluster])
      missing = max(0.0, expected - len(np.unique(ids[cluster])))
      denominator = np.sum(weights) + missing * np.mean(weights)
      score = np.sum(weighted_scores) / denominator if denominator > 0 else scores[top]
      if np.sum(weighted_scores) > 0:
        box = np.sum(boxes[cluster] * weighted_scores[:, None], 0) / np.sum(weighted_scores)
      else:
        box = boxes[top]
      if score > min_score:
        out_boxes.append(box)
        out_scores.append(score)
        out_classes.append(label)
      order = order[~matched]
  if not out_scores:
    return np.zeros((0, width)), np.zeros((0,)), np.zeros((0,), np.int64)
  rank = np.argsort(-np.asarray(out_scores), kind="stable")
  return (np.asarray(out_boxes)[rank], np.asarray(out_scores)[rank],
          np.asarray(out_classes, np.int64)[rank])
