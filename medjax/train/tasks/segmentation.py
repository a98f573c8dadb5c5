"""Semantic segmentation: patches in training, whole volumes with sliding windows in evaluation.

The evaluation of a run (`score_cases`, also used by the cascade) first
decides its post-processing on the validation split, as nnU-Net does
(`medjax.postprocess.decide`, `config.eval.postprocess`, default on): the
rules that raise the validation Dice are stored in `postprocessing.json`
(`write_evaluation_outputs`), applied to the test predictions, and read
back by `experiments.predict` (`Workdir.read_postprocessing_rules`). When a rule is
kept, `eval.json`'s `metric/class` keys are the post-processed numbers and
`postprocessing.raw` holds the raw ones; when none is kept (or the split has
no validation cases), the keys are the raw numbers, as before.
"""
from __future__ import annotations

import csv
import io
from typing import Iterator, Optional, Sequence

import flax.linen as nn
import ml_collections
import numpy as np

from medjax import calibration, postprocess
from medjax.data.pipeline import loaders
from medjax.errors import InputError
from medjax.inference.run_predictor import (channel_normalizer, check_uncertainty_config,
                                            run_segmenter)
from medjax.train import evaluate, report, config_data
from medjax.train.config_data import load_split
from medjax.train.tasks.base import Task
from medjax.train.workdir import Workdir


def remap_labels(batches, label_map: Sequence[int]):
  """Applies `config.label_map` (old class id -> new class id) to every batch.

  E.g. (0, 1, 1) merges the tumour into the organ (stage 1 of a cascade) and
  (0, 0, 1) keeps only the tumour.
  """
  lut = np.asarray(label_map, np.int32)
  for batch in batches:
    yield {**batch, "label": lut[batch["label"]]}


def _raw(image: np.ndarray) -> np.ndarray:
  return image  # the segmenter normalises what it is given, as in training


def _truth(label: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """The true labels in the run's classes (`config.label_map` applied)."""
  return np.asarray(config.label_map, np.int32)[label] if config.get("label_map") else label


def decide_postprocessing(segmenter, config: ml_collections.ConfigDict) -> Optional[dict]:
  """The `postprocessing.json` dict of a run: the rules `postprocess.decide`
  keeps on the validation split's predictions (no rule when the dataset has no
  validation split), or None when `config.eval.postprocess` is off."""
  if not config.eval.get("postprocess", True):
    return None
  names = tuple(config.class_names)
  try:
    source = load_split(config, "validation")
  except InputError as e:
    return postprocess.rules_to_json((), {"cases": 0, "note": f"no validation split: {e}"}, names)
  dtype = np.uint8 if len(names) <= 256 else np.int32  # label maps held for every case
  cases = [postprocess.ValidationCase(np.asarray(segmenter(case["image"])[0]).astype(dtype),
                                      _truth(case["label"], config).astype(dtype),
                                      tuple(float(s) for s in case["spacing"]))
           for case in loaders.eval_cases(source, normalize=_raw)]
  rules, record = postprocess.decide(cases, range(1, len(names)))
  return postprocess.rules_to_json(rules, record, names)


def score_cases(segmenter, config: ml_collections.ConfigDict, source: Sequence[dict], *,
                trust: Optional[calibration.SegmentationTrust] = None) -> evaluate.Evaluation:
  """`evaluate.score_segmentation` of `segmenter` over `source`, with `config`'s
  class names, label map, surface-metric and report settings (and `trust`:
  calibration / uncertainty scoring, see `trust_scoring`), after deciding the
  post-processing on the validation split (`decide_postprocessing`): the kept
  rules are applied to every prediction, and `results["postprocessing"]`
  says which (`applied`, `rules`, the validation Dice `validation_dice_raw` /
  `validation_dice_final` per class id, and with a rule kept, `raw`: the
  test means without post-processing)."""
  record = decide_postprocessing(segmenter, config)
  rules = postprocess.rules_from_json(record) if record else ()
  postprocessor = ((lambda labels, spacing: postprocess.apply(labels, rules, spacing))
                   if rules else None)
  evaluation = evaluate.score_segmentation(
      segmenter, loaders.eval_cases(source, normalize=_raw), tuple(config.class_names),
      label_map=tuple(config.get("label_map") or ()), surface=config.eval.surface_metrics,
      keep=int(config.eval.report_cases), display=channel_normalizer(config), trust=trust,
      postprocessor=postprocessor)
  if record is not None:
    validation = record["validation"]
    summary = {"applied": bool(rules), "rules": record["rules"],
               "validation_cases": validation.get("cases", 0),
               "validation_dice_raw": validation.get("dice_raw", {}),
               "validation_dice_final": validation.get("dice_final", {})}
    summary.update(evaluation.results.get("postprocessing", {}))
    evaluation.results = evaluate.with_keys_before_per_case(evaluation.results,
                                                            {"postprocessing": summary})
    evaluation.postprocessing = record
  return evaluation


# validation voxels per case for temperature scaling (4 cases of 64x96x96: 800k of 2.4M voxels)
TEMPERATURE_VOXELS_PER_CASE = 200_000


def fit_case_temperature(segmenter, config: ml_collections.ConfigDict, source: Sequence[dict], *,
                         voxels_per_case: int = TEMPERATURE_VOXELS_PER_CASE) -> float:
  """Temperature scaling (Guo 2017) of a segmenter's probabilities, fitted on
  `source` (the validation split): NLL of `softmax(ln p / T)` minimised over
  a random subsample of `voxels_per_case` voxels of each case (seeded by the
  case's position)."""
  lut = np.asarray(config.label_map, np.int32) if config.get("label_map") else None
  logits, labels = [], []
  for i, case in enumerate(loaders.eval_cases(source, normalize=_raw)):
    probs = segmenter(case["image"])[1]
    label = case["label"] if lut is None else lut[case["label"]]
    p, y = calibration.subsample_voxels(probs, label, max_voxels=voxels_per_case, seed=i)
    logits.append(calibration.log_probabilities(p))
    labels.append(y)
  if not labels:
    raise InputError("config.eval.calibration: the validation split is empty; temperature "
                     "scaling needs validation cases")
  return calibration.fit_temperature(np.concatenate(logits), np.concatenate(labels))


def trust_scoring(config: ml_collections.ConfigDict, segmenter
                  ) -> Optional[calibration.SegmentationTrust]:
  """The calibration / uncertainty scoring `config.eval` asks for, or None.

  `eval.calibration=True`: ECE before and after temperature scaling (T fitted
  on the validation split), reliability data, and error detection by the
  predictive entropy; `eval.uncertainty="mc_dropout"|"tta"`: error
  detection by the sampled maps (entropy, mutual information, variance), with
  temperature scaling only when `eval.calibration` is also set.
  """
  method = config.eval.get("uncertainty", "none")
  calibrate = bool(config.eval.get("calibration", False))
  if method == "none" and not calibrate:
    return None
  temperature = (fit_case_temperature(segmenter, config, load_split(config, "validation"))
                 if calibrate else None)
  return calibration.SegmentationTrust(tuple(config.class_names), temperature=temperature)


def write_case_reports(config: ml_collections.ConfigDict, evaluation: evaluate.Evaluation,
                       workdir: Workdir, *, title: str = "case") -> list[str]:
  """`report/case_*.png` of the evaluation's kept cases."""
  return report.plot_examples(workdir, evaluation.examples, class_names=tuple(config.class_names),
                              title=title)


def write_eval_csv(config: ml_collections.ConfigDict, evaluation: evaluate.Evaluation,
                   workdir: Workdir) -> str:
  """`eval.csv`: one row per test case and foreground class (`evaluate.class_rows`);
  an empty cell is a value that is not finite (None in `eval.json`)."""
  columns, rows = evaluate.class_rows(evaluation.results.get("per_case", []),
                                      tuple(config.class_names))
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return workdir.write_eval_csv(out.getvalue())


def write_evaluation_outputs(config: ml_collections.ConfigDict, evaluation: evaluate.Evaluation,
                             workdir: Workdir, *, title: str = "case") -> list[str]:
  """Everything a segmentation evaluation leaves in the workdir besides `eval.json`:
  `report/case_*.png`, `report/box_<metric>.png` (`report.write_metric_boxes`),
  `eval.csv` and `postprocessing.json` (when post-processing was decided);
  returns the paths."""
  names = tuple(config.class_names)
  paths = write_case_reports(config, evaluation, workdir, title=title)
  paths += report.write_metric_boxes(workdir, evaluation.results.get("per_case", []), names)
  paths.append(write_eval_csv(config, evaluation, workdir))
  if evaluation.postprocessing is not None:
    paths.append(workdir.write_postprocessing(evaluation.postprocessing))
  return paths


class SegmentationTask(Task):
  """Dense labels `(N, *S)` from images `(N, *S, C)`: nnU-Net-style patch
  training (foreground oversampling, flips), sliding-window evaluation with
  overlap/mirroring of `config.eval`, per-class Dice and surface metrics."""

  summary_metrics = ("dice", "hd95", "ece", "uncertainty_auroc")
  item_name = "cases"

  def validate(self, config: ml_collections.ConfigDict) -> None:
    dims = config.model.get("spatial_dims", len(config.patch_size))
    if len(config.patch_size) != dims:
      raise InputError(f"config.patch_size={tuple(config.patch_size)}: expected {dims} sizes "
                       "(model.spatial_dims)")
    check_uncertainty_config(config)

  def train_batches(self, config, source, *, start_step, process_index, process_count
                    ) -> Iterator[dict[str, np.ndarray]]:
    batches = loaders.train_batches(
        source, patch_size=tuple(config.patch_size), foreground_fraction=config.foreground_fraction,
        flip_axes=tuple(config.flip_axes), global_batch_size=config.global_batch_size,
        seed=config.seed, start_step=start_step, num_steps=config.num_steps,
        process_index=process_index, process_count=process_count,
        worker_count=config.get("data_workers", 0), **config_data.patch_options(config))
    if config.get("label_map"):
      batches = remap_labels(batches, config.label_map)
    return batches

  def evaluate(self, config, model: nn.Module, variables: dict, source) -> evaluate.Evaluation:
    segmenter = run_segmenter(config, model, variables)
    return score_cases(segmenter, config, source, trust=trust_scoring(config, segmenter))

  def write_outputs(self, config, evaluation, workdir):
    paths = write_evaluation_outputs(config, evaluation, workdir)
    reliability = report.write_reliability(workdir, evaluation.reliability,
                                           title="voxels of the test cases")
    return paths + ([reliability] if reliability else [])
