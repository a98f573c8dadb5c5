"""Image-level classification (e.g. "is there a lesion in this slice?", or the
class at the centre of a patch: `config.label_key` names the label)."""
from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np

from medjax import calibration, uncertainty
from medjax.data.pipeline import loaders
from medjax.errors import InputError
from medjax.inference.run_predictor import check_uncertainty_config, tta_axes
from medjax.train import config_data, evaluate, report
from medjax.train.config_data import load_split
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
    return loaders.classification_batches(
        source, global_batch_size=config.global_batch_size, seed=config.seed,
        start_step=start_step, num_steps=config.num_steps, process_index=process_index,
        process_count=process_count, flip_axes=tuple(config.flip_axes),
        image_shape=tuple(config.patch_size), **data_options(config),
        worker_count=config.get("data_workers", 0))

  def validate(self, config: ml_collections.ConfigDict) -> None:
    check_uncertainty_config(config)

  def evaluate(self, config, model, variables, source) -> evaluate.Evaluation:
    """Accuracy, AUC, ECE; with `config.eval.calibration` / `.uncertainty`
    also calibration before and after temperature scaling (T fitted on the
    validation split) and error detection (`evaluate.score_classification`)."""
    predict_batch = image_predictor(config, model, variables)
    calibrate = bool(config.eval.get("calibration", False))
    temperature = None
    if calibrate:
      temperature = fit_image_temperature(predict_batch, config, load_split(config, "validation"))
    return evaluate.score_classification(
        predict_batch, loaders.classification_images(source, **data_options(config)),
        tuple(config.class_names), batch_size=int(config.eval.batch_size),
        calibrate=calibrate or config.eval.get("uncertainty", "none") != "none",
        temperature=temperature)

  def write_outputs(self, config, evaluation, workdir):
    """`report/reliability.png` when calibration was scored."""
    path = report.write_reliability(workdir, evaluation.reliability, title="test images")
    return [path] if path else []


def image_predictor(config: ml_collections.ConfigDict, model, variables: dict):
  """Images `(B, *S, C)` -> probabilities `(B, K)`; with `config.eval.uncertainty`
  "mc_dropout" (`uncertainty_samples` passes) or "tta" (the flips of
  `predictor.tta_axes`), `(mean probabilities, {"entropy", "mutual_information",
  "variance": (B,)})`, all samples of a batch in one compiled call."""
  variables = jax.device_put(variables, jax.local_devices()[0])
  method = config.eval.get("uncertainty", "none")
  if method == "none":
    predict = make_predict_fn(model)
    return lambda images: predict(variables, images)
  moments = uncertainty.window_moments_fn(
      model.apply, variables, method, samples=int(config.eval.get("uncertainty_samples", 20)),
      rng=jax.random.fold_in(jax.random.key(int(config.seed)), 0x4D43), axes=tta_axes(config))

  return lambda images: uncertainty.maps_from_moments(moments(images))


def fit_image_temperature(predict_batch, config: ml_collections.ConfigDict, source) -> float:
  """Temperature scaling (Guo 2017) fitted on every image of `source` (the
  validation split): NLL of `softmax(ln p / T)`, which is `softmax(z / T)`
  of the logits."""
  probs, labels, batch = [], [], []

  def flush():
    if batch:
      out = predict_batch(np.stack(batch))
      probs.append(np.asarray(out[0] if isinstance(out, tuple) else out))
      batch.clear()

  for _, image, label in loaders.classification_images(source, **data_options(config)):
    batch.append(image)
    labels.append(int(label))
    if len(batch) == int(config.eval.batch_size):
      flush()
  flush()
  if not labels:
    raise InputError("config.eval.calibration: the validation split is empty; temperature "
                     "scaling needs validation images")
  return calibration.fit_temperature(calibration.log_probabilities(np.concatenate(probs)),
                                     np.asarray(labels))


def data_options(config: ml_collections.ConfigDict) -> dict:
  """`label_key` (default "lesion"), `channels` (`config.in_channels`: 3 for RGB) and the
  intensity normalisation of every channel, `config_data.input_normalizer`: the fixed
  `(mean, std)` window of `config.intensity_stats` (patches), else a per-image z-score."""
  return {"label_key": config.get("label_key", "lesion"),
          "channels": int(config.get("in_channels", 1)),
          "normalize": config_data.input_normalizer(config)}
