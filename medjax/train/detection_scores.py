"""The numbers of a detection evaluation, from each case's detections and ground truth.

`score_detections` turns `CaseResult`s (one per scan) into the `eval.json`
dict of the detection task:

* the LUNA16 FROC (`medjax.detection.froc.froc_luna16`, Setio et al. 2017):
  sensitivity at 1/8..8 FP/scan, CPM and their bootstrap 95% CIs, from the
  candidates' world centres against the nodules' world centres and diameters,
  excluded findings honoured;
* nnDetection's box metrics (`medjax.detection.iou_metrics`): the IoU-matched
  FROC score at IoU 0.1 and 0.5 and COCO mAP over IoU 0.1..0.5 (voxel boxes);
* at the operating threshold (chosen on validation): sensitivity, FP/scan and
  sensitivity per nodule size (< 6, 6-10, > 10 mm);
* case-level AUROC of the highest candidate score for "the scan has a nodule".

Keys are `metric/<name>`, `<name>` the class name of a one-class detector (else
"all": the classes are pooled).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from medjax.detection import froc as froc_lib
from medjax.detection import iou_metrics
from medjax.detection import boxes as box_ops


@dataclasses.dataclass
class CaseResult:
  """One scan: its detections, its truth and the time spent on it.

  Attributes:
    case: the scan's id.
    boxes: `(K, 2n)` detected voxel boxes; scores: `(K,)`.
    findings: `froc.ScanFindings` (world mm) of the detections and the truth.
    gt_boxes: `(M, 2n)` true voxel boxes.
    timings: seconds of "network", "nms", "clustering".
  """
  case: str
  boxes: np.ndarray
  scores: np.ndarray
  findings: froc_lib.ScanFindings
  gt_boxes: np.ndarray
  timings: dict


def scan_findings(example: dict, boxes: np.ndarray, scores: np.ndarray,
                  case: str) -> froc_lib.ScanFindings:
  """The LUNA16 view of one scan: detections' world centres (through the example's
  array-axis `affine`) against the example's nodules and excluded findings."""
  count = int(example["num_boxes"])
  excluded = np.asarray(example["excluded_world"], np.float64)[:int(example["num_excluded"])]
  centers = (box_ops.centers_to_world(boxes, example["affine"]) if len(boxes)
             else np.zeros((0, 3)))
  return froc_lib.ScanFindings(
      case, centers, scores, np.asarray(example["centers_world"])[:count],
      np.asarray(example["diameters_mm"])[:count], excluded[:, :3], excluded[:, 3])


def _finite(value) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def operating_threshold(result: froc_lib.FrocResult, target_fp_per_scan: float) -> float:
  """The lowest score whose false positives per scan stay <= `target_fp_per_scan` on
  `result`'s curve (1.0 when even the top candidate exceeds it)."""
  ok = np.nonzero(result.fps <= target_fp_per_scan)[0]
  threshold = float(result.thresholds[ok[-1]]) if len(ok) else 1.0
  return 1.0 if not math.isfinite(threshold) else threshold


def case_row(result: CaseResult, threshold: float) -> dict:
  """`per_case` row: nodules, detected and false positives at `threshold`, top score, times."""
  match = froc_lib.match_scan(result.findings)
  kept = result.scores >= threshold
  return {"case": result.case, "nodules": int(len(result.findings.nodule_diameters)),
          "detected": int(np.sum(match.nodule_scores >= threshold)),
          "false_positives": int(np.sum(match.fp_scores >= threshold)),
          "findings": int(kept.sum()), "candidates": int(len(result.scores)),
          "top_score": _finite(result.scores.max()) if len(result.scores) else 0.0,
          **{f"{k}_s": round(float(v), 4) for k, v in result.timings.items()}}


def score_detections(results: Sequence[CaseResult], *, threshold: float, name: str,
                     bootstrap: int = 1000, seed: int = 0) -> tuple[dict, froc_lib.FrocResult]:
  """`(eval.json dict, FrocResult)` of the scans (module docstring)."""
  scans = [r.findings for r in results]
  froc = froc_lib.froc_luna16(scans, bootstrap=bootstrap, seed=seed)
  out = {f"cpm/{name}": float(froc.cpm), f"cpm_ci_low/{name}": _finite(froc.cpm_ci[0]),
         f"cpm_ci_high/{name}": _finite(froc.cpm_ci[1])}
  for rate, sens, low, high in zip(froc.fp_rates, froc.sensitivity, froc.ci_low, froc.ci_high):
    out[f"froc@{rate:g}fp/{name}"] = float(sens)
    out[f"froc@{rate:g}fp_ci/{name}"] = [_finite(low), _finite(high)]
  box_cases = [(r.boxes, r.scores, r.gt_boxes) for r in results]
  for iou, value in iou_metrics.froc_iou(box_cases).items():
    out[f"iou_froc@{iou:g}/{name}"] = float(value["score"])
  coco = iou_metrics.coco_map(box_cases)
  out[f"mAP/{name}"] = _finite(coco.pop("mAP"))
  for key, value in coco.items():
    out[f"{key}/{name}"] = _finite(value)
  point = froc_lib.operating_point(scans, threshold)
  out[f"sensitivity/{name}"] = _finite(point.sensitivity)
  out[f"fp_per_scan/{name}"] = float(point.fp_per_scan)
  for bin_name, value in point.by_size.items():
    out[f"sensitivity_{bin_name}/{name}"] = _finite(value)
  out[f"case_auroc/{name}"] = _finite(froc_lib.case_auroc(scans))
  out["operating_threshold"] = float(threshold)
  out["counts"] = {"scans": froc.num_scans, "nodules": froc.num_nodules,
                   "detected": froc.num_detected, "false_positives": froc.num_false_positives,
                   "nodules_per_size": point.size_counts}
  timings = {}
  for key in ("network", "nms", "clustering"):
    values = [r.timings.get(key, 0.0) for r in results]
    timings[f"{key}_s_per_case"] = round(float(np.mean(values)), 4) if values else 0.0
  out["inference_time"] = timings
  out["froc_curve"] = {"fps_per_scan": [float(v) for v in froc.fps],
                       "sensitivity": [float(v) for v in froc.curve]}
  out["per_case"] = [case_row(r, threshold) for r in results]
  return out, froc
