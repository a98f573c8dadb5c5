"""Lesion detection with a RetinaNet / Retina U-Net: boxes and scores per scan, scored by FROC.

Training (`medjax.data.pipeline.detection_batches`): patches with foreground
oversampling around the lesions, their visible boxes padded to the dataset's
`max_boxes` (a batch without any lesion is an ordinary batch), and the
objective `medjax.detection.detection_loss` (matching, hard-negative-sampled
BCE or focal classification, GIoU or smooth-L1 regression, and the
segmentation head's Dice + CE) with `config.detection_loss`'s choices.

Evaluation (`medjax.inference.detect`): whole volumes through the sliding
window, per-window decoding, top-k and jit NMS, mirror TTA, weighted box
clustering across windows. The clustering IoU and the minimum box size are
chosen on the validation split (grid `config.eval.detection.iou_grid` x
`min_size_grid_mm`, the best validation CPM), and the operating score
threshold is the lowest score at which the validation false positives per
scan stay <= `config.eval.detection.target_fp_per_scan`, as nnDetection
sweeps its post-processing on validation (Baumgartner et al. 2021); the
choice is stored in `detection_thresholds.json` (`Workdir`) and read back by
`experiments.predict`. The test split is scored by
`medjax.train.detection_scores` (LUNA16 FROC / CPM with bootstrap CIs,
IoU-FROC, COCO mAP, sensitivity and FP/scan at the operating threshold, per
size, case AUROC) and drawn by `medjax.train.detection_report`
(`report/froc.png`, `report/boxes_<case>.png`).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np

from medjax.data.pipeline import augment, detection_batches
from medjax.detection import DetectionLossConfig, detection_loss
from medjax.detection import froc as froc_lib
from medjax.errors import InputError
from medjax.inference import detect
from medjax.inference.run_predictor import channel_normalizer
from medjax.models import anchors_for
from medjax.train import config_data, detection_report, detection_scores, evaluate
from medjax.train.config_data import load_split
from medjax.train.model_factory import build_model
from medjax.train.step import Objective
from medjax.train.tasks.base import Task
from medjax.train.workdir import Workdir


@dataclasses.dataclass
class DetectionEvaluation(evaluate.Evaluation):
  """`evaluate.Evaluation` plus the test FROC (`froc`) and the thresholds record (`thresholds`)."""
  froc: Optional[froc_lib.FrocResult] = None
  thresholds: Optional[dict] = None


def loss_config(config: ml_collections.ConfigDict) -> DetectionLossConfig:
  """`DetectionLossConfig(**config.detection_loss)`; InputError naming a bad field."""
  fields = config.get("detection_loss") or ml_collections.ConfigDict()
  try:
    return DetectionLossConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in fields.to_dict().items()})
  except (TypeError, ValueError) as e:
    raise InputError(f"config.detection_loss: {e}") from None


def detector_settings(config: ml_collections.ConfigDict) -> detect.DetectorSettings:
  """The window settings of `config.eval` (`detect.DetectorSettings`)."""
  d = config.eval.detection
  roi = tuple(config.eval.get("roi_size") or ()) or tuple(config.patch_size)
  weights = loss_config(config).coder_weights
  return detect.DetectorSettings(
      roi_size=tuple(int(r) for r in roi), overlap=float(config.eval.overlap),
      batch_size=int(config.eval.batch_size), mirror_axes=tuple(config.eval.mirror_axes),
      top_k=int(d.top_k), window_nms_iou=float(d.window_nms_iou),
      window_detections=int(d.window_detections), min_score=float(d.min_score),
      coder_weights=weights)


def make_detector(config: ml_collections.ConfigDict, model, variables) -> detect.WindowDetector:
  """The `detect.WindowDetector` of a trained run (`variables`: one dict or a list of members)."""
  settings = detector_settings(config)
  anchors = anchors_for(model, settings.roi_size).boxes
  return detect.WindowDetector(model, variables, anchors, settings, channel_normalizer(config))


def class_key(config: ml_collections.ConfigDict) -> str:
  """The metric suffix: the class name of a one-class detector, else "all"."""
  names = tuple(config.class_names)
  return names[0] if len(names) == 1 else "all"


def cached_windows(detector: detect.WindowDetector, source
                   ) -> list[tuple[dict, detect.WindowBoxes]]:
  """`(example, WindowBoxes)` of every case of `source` (the network runs once per case)."""
  return [(source[i], detector.detect_windows(np.asarray(source[i]["image"], np.float32)))
          for i in range(len(source))]


def case_results(cached: Sequence[tuple[dict, detect.WindowBoxes]],
                 post: detect.Postprocessing) -> list[detection_scores.CaseResult]:
  """The `CaseResult` of every cached case after `post`'s clustering and size filter."""
  out = []
  for i, (example, raw) in enumerate(cached):
    name = example.get("case", f"case_{i}")
    name = name.decode() if isinstance(name, bytes) else str(name)
    found = detect.finish(raw, example["spacing"], post)
    count = int(example["num_boxes"])
    out.append(detection_scores.CaseResult(
        name, found.boxes, found.scores,
        detection_scores.scan_findings(example, found.boxes, found.scores, name),
        np.asarray(example["boxes"])[:count], found.timings))
  return out


def choose_postprocessing(config: ml_collections.ConfigDict, detector: detect.WindowDetector
                          ) -> tuple[detect.Postprocessing, dict]:
  """The thresholds chosen on the validation split and the record of the choice
  (`detection_thresholds.json`): every `(iou, min size)` of the grids scored by the
  validation CPM (no bootstrap), the best kept (the first on ties), then the operating
  threshold at `target_fp_per_scan`. Without validation cases: the first grid values
  and `eval.detection.score_threshold`."""
  d = config.eval.detection
  grid = list(itertools.product(tuple(d.iou_grid), tuple(d.min_size_grid_mm)))
  try:
    source = load_split(config, "validation")
  except InputError as e:
    source, note = [], f"no validation split: {e}"
  else:
    note = ""
  if not len(source):
    post = detect.Postprocessing(float(grid[0][0]), float(grid[0][1]),
                                 float(d.score_threshold), int(d.max_detections))
    return post, {"postprocessing": post.to_json(),
                  "validation": {"cases": 0, "note": note or "the validation split is empty"}}
  cached = cached_windows(detector, source)
  scores = []
  for iou, size in grid:
    post = detect.Postprocessing(float(iou), float(size), 0.0, int(d.max_detections))
    result = froc_lib.froc_luna16([r.findings for r in case_results(cached, post)], bootstrap=0)
    scores.append(float(result.cpm))
  best = int(np.argmax(scores))
  iou, size = grid[best]
  post = detect.Postprocessing(float(iou), float(size), 0.0, int(d.max_detections))
  result = froc_lib.froc_luna16([r.findings for r in case_results(cached, post)], bootstrap=0)
  threshold = detection_scores.operating_threshold(result, float(d.target_fp_per_scan))
  post = dataclasses.replace(post, score_threshold=threshold)
  record = {"postprocessing": post.to_json(),
            "validation": {"cases": len(source), "cpm": scores[best],
                           "grid": [{"iou_threshold": float(g[0]), "min_size_mm": float(g[1]),
                                     "cpm": s} for g, s in zip(grid, scores)],
                           "target_fp_per_scan": float(d.target_fp_per_scan),
                           "sensitivity_at_threshold": float(
                               froc_lib.operating_point([r.findings for r in case_results(
                                   cached, post)], threshold).sensitivity)}}
  return post, record


def evaluate_detector(config: ml_collections.ConfigDict, detector: detect.WindowDetector,
                      source) -> DetectionEvaluation:
  """Chooses the thresholds on validation, detects every case of `source` and scores it."""
  post, record = choose_postprocessing(config, detector)
  cached = cached_windows(detector, source)
  results = case_results(cached, post)
  scores, froc = detection_scores.score_detections(
      results, threshold=post.score_threshold, name=class_key(config),
      bootstrap=int(config.eval.detection.bootstrap), seed=int(config.seed))
  scores = evaluate.with_keys_before_per_case(scores, {"thresholds": record})
  keep = int(config.eval.report_cases)
  order = sorted(range(len(results)), key=lambda i: -len(results[i].gt_boxes))[:keep]
  examples = [detection_report.BoxExample(
      results[i].case, np.asarray(cached[i][0]["image"], np.float32)[..., 0],
      results[i].gt_boxes, results[i].boxes, results[i].scores, post.score_threshold)
      for i in order]
  return DetectionEvaluation(scores, examples, froc=froc, thresholds=record)


class DetectionTask(Task):
  """Boxes with scores from volumes `(N, *S, C)` with a RetinaNet / Retina U-Net (module
  docstring); the dataset gives detection examples (`image`, `instances`, `boxes`, ...)."""

  summary_metrics = ("cpm", "sensitivity", "fp_per_scan", "mAP", "case_auroc")
  item_name = "scans"

  def validate(self, config: ml_collections.ConfigDict) -> None:
    if config.model.name != "retina_unet":
      raise InputError(f"config.model.name={config.model.name!r}: the detection task trains "
                       "'retina_unet' (segmentation_head=False: RetinaNet)")
    dims = int(config.model.get("spatial_dims", len(config.patch_size)))
    if len(config.patch_size) != dims:
      raise InputError(f"config.patch_size={tuple(config.patch_size)}: expected {dims} sizes "
                       "(model.spatial_dims)")
    section = config.get("augment")
    if section is not None and section.get("enabled", False):
      aug = augment.from_config(section, spacing=config.spacing, spatial_dims=dims)
      if aug.geometric:
        raise InputError("config.augment: geometric augmentation would move the lesions away "
                         "from their boxes; the detection task takes intensity augmentation only "
                         "(set rotation_p, scale_p, elastic_p and mirror to 0)")
    loss_config(config)
    d = config.eval.get("detection")
    if d is None:
      raise InputError("config.eval.detection: missing; expected the detection evaluation "
                       "section (experiments/configs/retina_unet_nodules.py)")
    if not tuple(d.iou_grid) or not tuple(d.min_size_grid_mm):
      raise InputError("config.eval.detection.iou_grid / min_size_grid_mm: expected at least "
                       "one value each")
    if float(d.target_fp_per_scan) <= 0:
      raise InputError(f"config.eval.detection.target_fp_per_scan={d.target_fp_per_scan}: "
                       "expected > 0")

  def objective(self, config: ml_collections.ConfigDict, label_loss) -> Objective:
    model = build_model(config, training=False)
    anchors = anchors_for(model, tuple(config.patch_size))
    settings = loss_config(config)
    if not model.segmentation_head:
      settings = dataclasses.replace(settings, segmentation_weight=0.0)

    def loss(outputs, batch):
      rng = jax.random.key(batch["sampling_seed"][0])
      gt = {k: batch[k] for k in ("boxes", "classes", "num_boxes", "instances")}
      return detection_loss(outputs, anchors, gt, settings, rng=rng)[0]

    return Objective(loss)

  def train_batches(self, config, source, *, start_step, process_index, process_count
                    ) -> Iterator[dict[str, np.ndarray]]:
    max_boxes = int(np.asarray(source[0]["boxes"]).shape[0]) if len(source) else 16
    return detection_batches.detection_batches(
        source, patch_size=tuple(config.patch_size), global_batch_size=config.global_batch_size,
        seed=config.seed, num_steps=config.num_steps, start_step=start_step,
        foreground_fraction=config.foreground_fraction, flip_axes=tuple(config.flip_axes),
        max_boxes=max_boxes, process_index=process_index, process_count=process_count,
        normalize=config_data.input_normalizer(config),
        worker_count=config.get("data_workers", 0))

  def evaluate(self, config, model, variables, source) -> DetectionEvaluation:
    return evaluate_detector(config, make_detector(config, model, variables), source)

  def write_outputs(self, config, evaluation: DetectionEvaluation, workdir: Workdir):
    paths = []
    if evaluation.thresholds is not None:
      paths.append(workdir.write_detection_thresholds(evaluation.thresholds))
    paths.append(detection_report.write_eval_csv(workdir, evaluation.results))
    if evaluation.froc is not None:
      paths.append(detection_report.write_froc(workdir, evaluation.froc,
                                               title=f"{config.model.name} test FROC"))
    paths += detection_report.write_box_slices(workdir, evaluation.examples)
    return paths
