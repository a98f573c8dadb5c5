"""Detection by segmentation: nnDetection's "U-Net + connected components" baseline.

A semantic segmentation network (any of the segmentation models) is trained as
the segmentation task trains it, on a detection dataset whose instance map is
turned into a class map (`SemanticSource`: instance i -> class of box i + 1).
At evaluation its sliding-window segmentation is split into connected
components, each a box scored by its highest class probability
(`medjax.detection.components`); the minimum component size
(`config.eval.detection.min_voxels_grid`, by validation CPM) and the operating
threshold (`target_fp_per_scan`) are chosen on the validation split and stored
in `detection_thresholds.json`; the test split is scored and drawn exactly as
the detection task does (`medjax.train.detection_scores`, `detection_report`).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import ml_collections
import numpy as np

from medjax.detection import froc as froc_lib
from medjax.detection.components import component_detections
from medjax.errors import InputError
from medjax.inference import detect
from medjax.inference.run_predictor import run_segmenter
from medjax.train import detection_report, detection_scores, evaluate
from medjax.train.config_data import load_split
from medjax.train.tasks.detection import DetectionEvaluation, DetectionTask
from medjax.train.tasks.segmentation import SegmentationTask


class SemanticSource:
  """A detection source seen as a segmentation source: `label` = the class map
  `(*S)` uint8 of the instance map (0 background, class of box i + 1 on instance i)."""

  def __init__(self, source: Sequence[dict[str, Any]]):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self.source[index]
    instances = np.asarray(example["instances"]).astype(np.int64)
    lut = np.concatenate([[0], np.asarray(example["classes"], np.int64) + 1])
    lut = np.clip(lut, 0, None).astype(np.uint8)
    return {"image": example["image"], "label": lut[np.clip(instances, 0, len(lut) - 1)],
            "case": example.get("case", f"case_{index}"),
            "spacing": example.get("spacing", np.ones(instances.ndim, np.float32))}


def segmented_cases(segmenter, source) -> list[tuple[dict, np.ndarray, np.ndarray]]:
  """`(example, labels (*S), probabilities (*S, K))` of every case (the network runs once)."""
  out = []
  for i in range(len(source)):
    example = source[i]
    labels, probs = segmenter(np.asarray(example["image"], np.float32))[:2]
    out.append((example, labels, probs))
  return out


def case_results(cases, min_voxels: int, max_detections: int
                 ) -> list[detection_scores.CaseResult]:
  """The `CaseResult` of every segmented case: its components of at least `min_voxels`."""
  results = []
  for i, (example, labels, probs) in enumerate(cases):
    name = example.get("case", f"case_{i}")
    name = name.decode() if isinstance(name, bytes) else str(name)
    boxes, scores, _ = component_detections(labels, probs, min_voxels=min_voxels)
    boxes, scores = boxes[:max_detections], scores[:max_detections]
    count = int(example["num_boxes"])
    results.append(detection_scores.CaseResult(
        name, boxes, scores, detection_scores.scan_findings(example, boxes, scores, name),
        np.asarray(example["boxes"])[:count], {}))
  return results


class ComponentsDetectionTask(SegmentationTask):
  """Trains a segmentation network on a detection dataset; evaluates its connected
  components as detections (module docstring)."""

  summary_metrics = DetectionTask.summary_metrics
  item_name = "scans"

  def validate(self, config: ml_collections.ConfigDict) -> None:
    super().validate(config)
    d = config.eval.get("detection")
    if d is None or not tuple(d.get("min_voxels_grid", ())):
      raise InputError("config.eval.detection.min_voxels_grid: expected at least one minimum "
                       "component size (experiments/configs/unet_components_nodules.py)")

  def train_batches(self, config, source, *, start_step, process_index, process_count
                    ) -> Iterator[dict[str, np.ndarray]]:
    return super().train_batches(config, SemanticSource(source), start_step=start_step,
                                 process_index=process_index, process_count=process_count)

  def evaluate(self, config, model, variables, source) -> DetectionEvaluation:
    d = config.eval.detection
    segmenter = run_segmenter(config, model, variables)
    name = tuple(config.class_names)[1] if len(config.class_names) == 2 else "all"
    validation = load_split(config, "validation")
    grid = [int(v) for v in d.min_voxels_grid]
    target = float(d.target_fp_per_scan)
    record: dict = {"validation": {"cases": len(validation), "target_fp_per_scan": target}}
    if len(validation):
      cached = segmented_cases(segmenter, validation)
      scores = [froc_lib.froc_luna16([r.findings for r in case_results(
          cached, v, int(d.max_detections))], bootstrap=0) for v in grid]
      best = int(np.argmax([s.cpm for s in scores]))
      min_voxels, threshold = grid[best], detection_scores.operating_threshold(scores[best],
                                                                               target)
      record["validation"].update(cpm=float(scores[best].cpm), grid=[
          {"min_voxels": v, "cpm": float(s.cpm)} for v, s in zip(grid, scores)])
    else:
      min_voxels, threshold = grid[0], float(d.score_threshold)
    post = detect.Postprocessing(0.0, 0.0, threshold, int(d.max_detections))
    record["postprocessing"] = post.to_json()
    record["min_voxels"] = min_voxels
    cached = segmented_cases(segmenter, source)
    results = case_results(cached, min_voxels, int(d.max_detections))
    out, froc = detection_scores.score_detections(results, threshold=threshold, name=name,
                                                  bootstrap=int(d.bootstrap),
                                                  seed=int(config.seed))
    out = evaluate.with_keys_before_per_case(out, {"thresholds": record})
    order = sorted(range(len(results)),
                   key=lambda i: -len(results[i].gt_boxes))[:int(config.eval.report_cases)]
    examples = [detection_report.BoxExample(
        results[i].case, np.asarray(cached[i][0]["image"], np.float32)[..., 0],
        results[i].gt_boxes, results[i].boxes, results[i].scores, threshold) for i in order]
    return DetectionEvaluation(out, examples, froc=froc, thresholds=record)

  def write_outputs(self, config, evaluation, workdir):
    return DetectionTask.write_outputs(self, config, evaluation, workdir)

