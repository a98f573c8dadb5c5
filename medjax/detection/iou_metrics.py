"""Box-overlap detection metrics: IoU-based FROC and COCO-style mAP, as nnDetection reports them.

Matching (COCO, Lin et al. 2014, pycocotools `evaluateImg`; nnDetection's
`nndet/evaluator/detection/matching.py`): per case and IoU threshold t, the
case's detections are visited by decreasing score (the `max_detections` best)
and each takes the not-yet-matched ground-truth box of highest IoU, if that IoU
is >= t; unmatched detections are false positives.

* `froc_iou`: nnDetection's `FROCMetric` (`nndet/evaluator/detection/froc.py`):
  the FROC of matched detections over all cases, sensitivity interpolated at
  1/8..8 false positives per case; the score is the mean.
* `coco_map`: nnDetection's `COCOMetric` (`nndet/evaluator/detection/coco.py`):
  per IoU threshold, precision made monotone and read at the 101 recall points
  0, 0.01, .., 1 (0 past the highest recall), averaged; the mAP averages over
  the IoU thresholds 0.1, 0.15, .., 0.5 (nnDetection's default range).

Boxes are in any one consistent layout of this package (voxel or world); cases
without ground truth contribute only false positives.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from medjax.detection import boxes as box_ops
from medjax.detection.froc import FP_RATES, froc_curve, sensitivity_at

IOU_RANGE = tuple(np.round(np.arange(0.1, 0.5 + 1e-9, 0.05), 2))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def match_detections(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                     iou_thresholds: Sequence[float], *, max_detections: int = 100
                     ) -> tuple[np.ndarray, np.ndarray]:
  """COCO greedy matching of one case.

  Returns:
    `(matched (T, D) bool, scores (D,))` for the case's `D <= max_detections`
    best detections sorted by decreasing score.
  """
  det_scores = np.asarray(det_scores, np.float64).reshape(-1)
  order = np.argsort(-det_scores, kind="mergesort")[:max_detections]
  det_boxes = np.asarray(det_boxes, np.float64)[order]
  gt_boxes = np.asarray(gt_boxes, np.float64)
  matched = np.zeros((len(iou_thresholds), len(order)), bool)
  if len(order) and len(gt_boxes):
    iou = box_ops.box_iou(det_boxes, gt_boxes)  # (D, G)
    for t, threshold in enumerate(iou_thresholds):
      taken = np.zeros(len(gt_boxes), bool)
      for d in range(len(order)):
        candidates = np.where(taken, -1.0, iou[d])
        best = int(np.argmax(candidates))
        if candidates[best] >= min(threshold, 1 - 1e-10):
          taken[best] = True
          matched[t, d] = True
  return matched, det_scores[order]


def _pooled(cases, iou_thresholds, max_detections):
  """Matches of every case pooled: `(matched (T, D_all), scores (D_all,), num_gt)`."""
  matched, scores, num_gt = [], [], 0
  for det_boxes, det_scores, gt_boxes in cases:
    m, s = match_detections(det_boxes, det_scores, gt_boxes, iou_thresholds,
                            max_detections=max_detections)
    matched.append(m)
    scores.append(s)
    num_gt += len(np.asarray(gt_boxes))
  return (np.concatenate(matched, axis=1) if matched else np.zeros((len(iou_thresholds), 0), bool),
          np.concatenate(scores) if scores else np.zeros(0), num_gt)


def froc_iou(cases: Sequence[tuple], *, iou_thresholds: Sequence[float] = (0.1, 0.5),
             fp_rates: Sequence[float] = FP_RATES, max_detections: int = 100) -> dict:
  """FROC with IoU matching: `{iou: {"sensitivity": (R,), "score": mean}}`.

  Args:
    cases: `(det_boxes (D, 2n), det_scores (D,), gt_boxes (G, 2n))` per case.
  """
  matched, scores, num_gt = _pooled(cases, iou_thresholds, max_detections)
  out = {}
  for t, threshold in enumerate(iou_thresholds):
    hit = matched[t]
    # a matched detection is a hit at its own score; unmatched gts are misses (-inf)
    nodule_scores = np.concatenate([scores[hit], np.full(num_gt - int(hit.sum()), -np.inf)])
    fps, curve, _ = froc_curve(nodule_scores, scores[~hit], len(cases))
    sens = sensitivity_at(fps, curve, fp_rates)
    out[float(threshold)] = {"sensitivity": sens, "score": float(np.mean(sens))}
  return out


def average_precision(matched: np.ndarray, scores: np.ndarray, num_gt: int) -> float:
  """COCO's 101-point interpolated AP of pooled detections (matched `(D,)`, scores `(D,)`)."""
  if num_gt == 0:
    return float("nan")
  order = np.argsort(-scores, kind="mergesort")
  tp = np.cumsum(matched[order]).astype(np.float64)
  fp = np.cumsum(~matched[order]).astype(np.float64)
  recall = tp / num_gt
  precision = tp / (tp + fp + np.spacing(1))
  precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
  index = np.searchsorted(recall, RECALL_POINTS, side="left")
  values = np.where(index < len(precision), precision[np.minimum(index, len(precision) - 1)]
                    if len(precision) else 0.0, 0.0)
  return float(np.mean(values))


def coco_map(cases: Sequence[tuple], *, iou_thresholds: Sequence[float] = IOU_RANGE,
             max_detections: int = 100) -> dict:
  """COCO-style AP per IoU threshold and their mean: `{"mAP": .., "AP@0.10": .., ...}`.

  Args:
    cases: `(det_boxes (D, 2n), det_scores (D,), gt_boxes (G, 2n))` per case.
  """
  matched, scores, num_gt = _pooled(cases, iou_thresholds, max_detections)
  per_threshold = {f"AP@{t:.2f}": average_precision(matched[k], scores, num_gt)
                   for k, t in enumerate(iou_thresholds)}
  return {"mAP": float(np.mean(list(per_threshold.values()))), **per_threshold}
