"""Semantic segmentation: patches in training, whole volumes with sliding windows in evaluation."""
from __future__ import annotations

from typing import Iterator, Sequence

import flax.linen as nn
import ml_collections
import numpy as np

from medjax.data import pipeline, transforms
from medjax.errors import InputError
from medjax.train import evaluate, report
from medjax.train.predictor import RunSegmenter, window_predictor
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


def score_cases(segmenter, config: ml_collections.ConfigDict, source: Sequence[dict]
                ) -> evaluate.Evaluation:
  """`evaluate.score_segmentation` of `segmenter` over `source`, with `config`'s
  class names, label map, surface-metric and report settings."""
  return evaluate.score_segmentation(
      segmenter, pipeline.eval_cases(source, normalize=_raw), tuple(config.class_names),
      label_map=tuple(config.get("label_map") or ()), surface=config.eval.surface_metrics,
      keep=int(config.eval.report_cases), display=transforms.normalize_ct_channels)


def write_case_reports(config: ml_collections.ConfigDict, evaluation: evaluate.Evaluation,
                       workdir: Workdir, *, title: str = "case") -> list[str]:
  """`report/case_*.png` of the evaluation's kept cases."""
  return report.plot_examples(workdir, evaluation.examples, class_names=tuple(config.class_names),
                              title=title)


class SegmentationTask(Task):
  """Dense labels `(N, *S)` from images `(N, *S, C)`: nnU-Net-style patch
  training (foreground oversampling, flips), sliding-window evaluation with
  overlap/mirroring of `config.eval`, per-class Dice and surface metrics."""

  summary_metrics = ("dice", "hd95")
  item_name = "cases"

  def validate(self, config: ml_collections.ConfigDict) -> None:
    dims = config.model.get("spatial_dims", len(config.patch_size))
    if len(config.patch_size) != dims:
      raise InputError(f"config.patch_size={tuple(config.patch_size)}: expected {dims} sizes "
                       "(model.spatial_dims)")

  def train_batches(self, config, source, *, start_step, process_index, process_count
                    ) -> Iterator[dict[str, np.ndarray]]:
    batches = pipeline.train_batches(
        source, patch_size=tuple(config.patch_size), foreground_fraction=config.foreground_fraction,
        flip_axes=tuple(config.flip_axes), global_batch_size=config.global_batch_size,
        seed=config.seed, start_step=start_step, num_steps=config.num_steps,
        process_index=process_index, process_count=process_count,
        worker_count=config.get("data_workers", 0))
    if config.get("label_map"):
      batches = remap_labels(batches, config.label_map)
    return batches

  def evaluate(self, config, model: nn.Module, variables: dict, source) -> evaluate.Evaluation:
    return score_cases(RunSegmenter(window_predictor(config, model, variables)), config, source)

  def write_outputs(self, config, evaluation, workdir):
    return write_case_reports(config, evaluation, workdir)
