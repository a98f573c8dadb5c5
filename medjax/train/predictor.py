"""A trained run as a function of a raw image: the one predictor that evaluation,
the cascade and `experiments.predict` share.

* `window_predictor(config, model, variables)`: the network of one run over
  whole images (normalised as in training, sliding window of
  `config.patch_size`, blending and mirroring of `config.eval`).
* A *segmenter* maps one raw image `(*S, C)` to `(labels (*S,) uint8,
  probabilities (*S, K) float32)`: `RunSegmenter` (one network, labels =
  argmax) and `CascadeSegmenter` (organ then lesion in the organ box,
  `medjax.inference.cascade_predict`).
* `load_predictor(workdir)`: the segmenter of a trained workdir, an
  ordinary run or a cascade (`stage1/`, `stage2/`), with the metadata a
  prediction tool needs and one-line errors for images it cannot take.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Union

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from medjax import inference
from medjax.data import transforms
from medjax.errors import InputError
from medjax.train import restore
from medjax.train.step import make_predict_fn
from medjax.train.workdir import Workdir

Segmenter = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
CASCADE_STAGES = ("stage1", "stage2")


def window_predictor(config: ml_collections.ConfigDict, model: nn.Module, variables: dict, *,
                     mirror_axes: Optional[tuple] = None) -> inference.WindowPredictor:
  """The trained network of `config` over whole raw images `(*S, C)` -> `(*S, K)`.

  The image is normalised as the training pipeline does
  (`transforms.normalize_ct_channels`), then predicted with windows of
  `config.patch_size` and `config.eval`'s overlap, blending and batch size.
  `mirror_axes` (default `config.eval.mirror_axes`) are flipped for
  test-time augmentation.
  """
  predict = make_predict_fn(model)
  variables = jax.device_put(variables, jax.local_devices()[0])
  ecfg = config.eval
  axes = tuple(ecfg.get("mirror_axes", ()) or ()) if mirror_axes is None else tuple(mirror_axes)
  return inference.WindowPredictor(
      predict_fn=lambda x: predict(variables, x), roi_size=tuple(int(r) for r in config.patch_size),
      overlap=float(ecfg.overlap), mode=ecfg.mode, batch_size=int(ecfg.batch_size),
      mirror_axes=axes, normalize=transforms.normalize_ct_channels)


@dataclasses.dataclass(frozen=True)
class RunSegmenter:
  """One network: labels are the argmax of its probabilities."""
  predictor: inference.WindowPredictor

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = self.predictor(image)
    return probs.argmax(-1).astype(np.uint8), probs


@dataclasses.dataclass(frozen=True)
class CascadeSegmenter:
  """Cascaded FCNs (Christ 2016): `inference.cascade_predict` over two stage predictors."""
  organ: inference.WindowPredictor
  lesion: inference.WindowPredictor
  margin: tuple

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return inference.cascade_predict(self.organ, self.lesion, image, margin=self.margin,
                                     probabilities=True)


def stage_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The ordinary segmentation config of each cascade stage: `config` minus
  `cascade`, plus the stage's overrides (nested like the config itself)."""
  out = []
  for stage in CASCADE_STAGES:
    base = config.to_dict()
    overrides = base.pop("cascade")[stage]
    stage_config = ml_collections.ConfigDict(base)
    stage_config.task = "segmentation"
    _merge(stage_config, overrides)
    out.append(stage_config)
  return out


def _merge(target: ml_collections.ConfigDict, overrides: dict) -> None:
  for key, value in overrides.items():
    if isinstance(value, dict) and isinstance(target.get(key), ml_collections.ConfigDict):
      _merge(target[key], value)
    else:
      target[key] = tuple(value) if isinstance(value, list) else value


def is_cascade(config: ml_collections.ConfigDict) -> bool:
  """A config whose run is two stages (`config.cascade.stage1`, `.stage2`)."""
  return "cascade" in config


def cascade_margin(config: ml_collections.ConfigDict) -> tuple:
  """The organ-box margin (voxels per axis) of a cascade config's second stage."""
  return tuple(int(m) for m in config.cascade.stage2.crop_margin)


@dataclasses.dataclass(frozen=True)
class RunPredictor:
  """A trained run (or cascade) ready to segment raw images.

  Attributes:
    config: the run's config (for a cascade, the top-level config).
    segmenter: raw `(*S, C)` -> `(labels, probabilities)`.
  """
  config: ml_collections.ConfigDict
  segmenter: Segmenter

  @property
  def spatial_dims(self) -> int:
    return len(self.config.patch_size)

  @property
  def in_channels(self) -> int:
    return int(self.config.get("in_channels", 1))

  @property
  def spacing(self) -> Optional[tuple]:
    spacing = self.config.get("spacing")
    return tuple(float(s) for s in spacing) if spacing else None

  @property
  def class_names(self) -> tuple:
    return tuple(self.config.class_names)

  def _checked(self, image: np.ndarray, name: str) -> np.ndarray:
    image = transforms.check_image(image, name)
    if image.ndim == self.spatial_dims:
      image = image[..., None]
    if image.ndim != self.spatial_dims + 1:
      raise InputError(f"{name}: shape {image.shape}; the model segments {self.spatial_dims}D "
                       f"images (config.patch_size={tuple(self.config.patch_size)})")
    if image.shape[-1] != self.in_channels:
      raise InputError(f"{name}: {image.shape[-1]} channel(s); the model expects "
                       f"{self.in_channels} (config.in_channels)")
    return image

  def predict(self, image: np.ndarray, *, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """`(labels (*S,) uint8, probabilities (*S, K) float32)` of a raw image `(*S[, C])`.

    One pass: for a cascade the labels follow the cascade rule, which is not
    the argmax of the joint probabilities. `name` (e.g. the file) starts the
    message of an `InputError` for an image the model cannot take (NaN/inf,
    wrong dimensions or channels).
    """
    labels, probs = self.segmenter(self._checked(image, name))
    return np.asarray(labels, np.uint8), np.asarray(probs, np.float32)

  def probabilities(self, image: np.ndarray, *, name: str = "image") -> np.ndarray:
    return self.predict(image, name=name)[1]

  def segment(self, image: np.ndarray, *, name: str = "image") -> np.ndarray:
    return self.predict(image, name=name)[0]


def load_predictor(workdir: Union[str, os.PathLike, Workdir], *,
                   mirror: bool = False) -> RunPredictor:
  """The trained run or cascade in `workdir`, as a `RunPredictor`.

  Args:
    workdir: a run's workdir (`config.json`, `checkpoints/`) or a cascade's
      (`config.json`, `stage1/`, `stage2/`).
    mirror: flip every spatial axis (test-time mirroring); otherwise each
      run's `config.eval.mirror_axes`.
  Raises:
    InputError: a missing or unreadable workdir, config or checkpoint.
  """
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(os.fspath(workdir))
  config = workdir.read_config()
  axes = tuple(range(len(config.patch_size))) if mirror else None
  if not is_cascade(config):
    config, model, variables = restore.load_run(workdir)
    return RunPredictor(config, RunSegmenter(window_predictor(config, model, variables,
                                                              mirror_axes=axes)))
  stages = []
  for stage in CASCADE_STAGES:
    stage_config, model, variables = restore.load_run(workdir.stage(stage))
    stages.append(window_predictor(stage_config, model, variables, mirror_axes=axes))
  return RunPredictor(config, CascadeSegmenter(*stages, margin=cascade_margin(config)))
