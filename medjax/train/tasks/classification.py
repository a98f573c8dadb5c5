"""Image-level classification (e.g. "is there a lesion in this slice?", or the
class at the centre of a patch: `config.label_key` names the label)."""
from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np

from medjax.data import pipeline
from medjax.train import evaluate
from medjax.train.step import make_predict_fn
from medjax.train.tasks.base import Task


class ClassificationTask(Task):
  """One label per image: shuffled epochs with flips in training; accuracy,
  ROC AUC and calibration (ECE) over the test images, in their order, with
  their case ids."""

  summary_metrics = ("accuracy", "auc", "ece")
  item_name = "images"

  def train_batches(self, config: ml_collections.ConfigDict, source, *, start_step,
                    process_index, process_count) -> Iterator[dict[str, np.ndarray]]:
    return pipeline.classification_batches(
        source, global_batch_size=config.global_batch_size, seed=config.seed,
        start_step=start_step, num_steps=config.num_steps, process_index=process_index,
        process_count=process_count, flip_axes=tuple(config.flip_axes),
        image_shape=tuple(config.patch_size), **data_options(config),
        worker_count=config.get("data_workers", 0))

  def evaluate(self, config, model, variables, source) -> evaluate.Evaluation:
    predict = make_predict_fn(model)
    variables = jax.device_put(variables, jax.local_devices()[0])
    return evaluate.score_classification(
        lambda images: predict(variables, images),
        pipeline.classification_images(source, **data_options(config)),
        tuple(config.class_names), batch_size=int(config.eval.batch_size))


def data_options(config: ml_collections.ConfigDict) -> dict:
  """`label_key` (default "lesion") and the intensity normalisation: per-image
  z-score, or the fixed `(mean, std)` of `config.intensity_stats` (patches)."""
  options = {"label_key": config.get("label_key", "lesion")}
  stats = config.get("intensity_stats")
  if stats:
    options["normalize"] = pipeline.fixed_window(*stats)
  return options
