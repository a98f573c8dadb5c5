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
  `RunPredictor.predict_volume(volume)` segments a volume in its own
  geometry: a run trained on a folder dataset applies the dataset's plan
  (`plan.json`: crop, normalise, resample, `medjax.data.preprocessing.apply_plan`) and
  maps the prediction back onto the volume's grid (`to_native`).
* Uncertainty (`medjax.uncertainty`): `run_segmenter(..., uncertainty=
  "mc_dropout" | "tta")` slides one compiled window function whose windows
  carry the samples (`uncertainty.window_moments_fn`) and returns
  `(labels, mean probabilities, {"entropy", "mutual_information",
  "variance"})`; `load_ensemble(workdirs)` averages several runs (deep
  ensembles) with the same maps over the members.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Union

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from medjax import inference, parallel, uncertainty
from medjax.data.pipeline import transforms
from medjax.data.preprocessing import apply_plan
from medjax.errors import InputError
from medjax.inference import restore
from medjax.train import config_data
from medjax.train.step import make_predict_fn
from medjax.train.workdir import Workdir

# raw image -> (labels, probabilities), or (labels, probabilities, uncertainty maps)
Segmenter = Callable[[np.ndarray], tuple]
CASCADE_STAGES = ("stage1", "stage2")


def tta_axes(config: ml_collections.ConfigDict) -> tuple:
  """The flips of test-time-augmentation uncertainty: `config.eval.mirror_axes`,
  else the training flips `config.flip_axes` (flips the network has seen)."""
  return tuple(config.eval.get("mirror_axes", ()) or config.get("flip_axes", ()) or ())


def window_predictor(config: ml_collections.ConfigDict, model: nn.Module, variables: dict, *,
                     mirror_axes: Optional[tuple] = None, uncertainty_method: str = "none",
                     samples: Optional[int] = None) -> inference.WindowPredictor:
  """The trained network of `config` over whole raw images `(*S, C)` -> `(*S, K)`.

  Each channel is normalised as the training pipeline does
  (`config_data.input_normalizer`: the CT window, a fixed window, or nothing
  for images normalised already), then the image is predicted with windows of
  `eval_window(config)` (the training patch unless `config.eval.roi_size` is
  set) and `config.eval`'s overlap, blending and batch size. `mirror_axes`
  (default `config.eval.mirror_axes`) are flipped for test-time augmentation.
  With a spatial axis in `config.mesh` (and the devices for it, `spatial_mesh`),
  every batch of windows is split over the mesh, depth over 'spatial': a window
  as large as a 512^3 volume is predicted by several devices at once.

  With `uncertainty_method` "mc_dropout" (`samples`, default
  `config.eval.uncertainty_samples`, dropout keys from `config.seed`) or
  "tta" (the flips of `tta_axes`, done inside the window function, so no
  further mirroring), each window gives `uncertainty.moments`
  `(*roi, K + 2)`: split the blended output with `uncertainty.maps_from_moments`.
  """
  ecfg = config.eval
  axes = tuple(ecfg.get("mirror_axes", ()) or ()) if mirror_axes is None else tuple(mirror_axes)
  method = uncertainty.check_method(uncertainty_method, "uncertainty")
  dp = spatial_mesh(config) if method == "none" else None
  if dp is not None:
    predict, variables = make_predict_fn(model, dp), dp.replicate(variables)
    predict_fn = lambda x: predict(variables, x)
  elif method == "none":
    variables = jax.device_put(variables, jax.local_devices()[0])
    predict = make_predict_fn(model)
    predict_fn = lambda x: predict(variables, x)
  else:
    variables = jax.device_put(variables, jax.local_devices()[0])
    samples = int(ecfg.get("uncertainty_samples", 20) if samples is None else samples)
    predict_fn = uncertainty.window_moments_fn(
        model.apply, variables, method, samples=samples,
        rng=jax.random.fold_in(jax.random.key(int(config.get("seed", 0))), 0x4D43),
        axes=tta_axes(config))
    if method == "tta":
      axes = ()
  return inference.WindowPredictor(
      predict_fn=predict_fn, roi_size=eval_window(config),
      overlap=float(ecfg.overlap), mode=ecfg.mode, batch_size=int(ecfg.batch_size),
      mirror_axes=axes, normalize=channel_normalizer(config))


def eval_window(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The sliding window of evaluation and prediction: `config.eval.roi_size` when set
  (e.g. a whole volume, split over a spatial mesh), else the training patch."""
  roi = config.eval.get("roi_size") or config.patch_size
  return tuple(int(r) for r in roi)


def spatial_mesh(config: ml_collections.ConfigDict) -> Optional[parallel.DataParallel]:
  """A mesh of this process's devices with the spatial axis of `config.mesh`, when it has
  one and the local devices can form it (windows then split along depth,
  `make_predict_fn`; each process predicts its own cases), else None (one device: the
  same probabilities; a run trained on 8 GPUs still predicts on a laptop)."""
  mesh = parallel.config_mesh(config)
  size = int((mesh or {}).get(parallel.SPATIAL, 1))
  if size == 1 or jax.local_device_count() % size or config.get("parallel") == "pmap":
    return None
  return parallel.DataParallel("shard_map", devices=jax.local_devices(),
                               mesh={parallel.AXIS: -1, parallel.SPATIAL: size},
                               kernels=config.kernels)


def channel_normalizer(config: ml_collections.ConfigDict) -> Callable[[np.ndarray], np.ndarray]:
  """Raw image `(*S, C)` -> network input `(*S, C)` float32: `config_data.input_normalizer`
  of each channel, as in training."""
  return transforms.per_channel(config_data.input_normalizer(config))


@dataclasses.dataclass(frozen=True)
class RunSegmenter:
  """One network: labels are the argmax of its probabilities."""
  predictor: inference.WindowPredictor

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = self.predictor(image)
    return probs.argmax(-1).astype(np.uint8), probs


@dataclasses.dataclass(frozen=True)
class UncertaintySegmenter:
  """One network sampled per window (MC dropout or TTA, `window_predictor`):
  `(labels (*S,) uint8, mean probabilities (*S, K), maps name -> (*S,) float32)`,
  labels the argmax of the mean."""
  predictor: inference.WindowPredictor

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    mean, maps = uncertainty.maps_from_moments(self.predictor(image))
    mean = np.asarray(mean, np.float32)
    return (mean.argmax(-1).astype(np.uint8), mean,
            {k: np.asarray(v, np.float32) for k, v in maps.items()})


@dataclasses.dataclass(frozen=True)
class EnsembleSegmenter:
  """Deep ensemble (Lakshminarayanan et al. 2017): the mean of the members'
  probabilities, labels its argmax, and the members' entropy / mutual
  information / variance maps (`uncertainty.summarize_samples` over members)."""
  members: tuple

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    probs = np.stack([np.asarray(m(image)[1], np.float32) for m in self.members])
    mean, maps = uncertainty.maps_from_moments(np.asarray(uncertainty.moments(probs)))
    return (mean.argmax(-1).astype(np.uint8), mean.astype(np.float32),
            {k: np.asarray(v, np.float32) for k, v in maps.items()})


def run_segmenter(config: ml_collections.ConfigDict, model: nn.Module, variables: dict, *,
                  mirror_axes: Optional[tuple] = None, uncertainty_method: Optional[str] = None,
                  samples: Optional[int] = None) -> Segmenter:
  """The segmenter of one trained network: `RunSegmenter`, or with
  `uncertainty_method` (default `config.eval.uncertainty`) "mc_dropout" /
  "tta" an `UncertaintySegmenter` (see `window_predictor`)."""
  method = (config.eval.get("uncertainty", "none") if uncertainty_method is None
            else uncertainty_method)
  predictor = window_predictor(config, model, variables, mirror_axes=mirror_axes,
                               uncertainty_method=method, samples=samples)
  return RunSegmenter(predictor) if method == "none" else UncertaintySegmenter(predictor)


def has_dropout(config: ml_collections.ConfigDict) -> bool:
  """The run's model has dropout (`config.model.dropout > 0`), so MC dropout samples."""
  return "cascade" not in config and float(config.model.get("dropout", 0.0) or 0.0) > 0


def check_uncertainty_config(config: ml_collections.ConfigDict) -> None:
  """InputError for `config.eval.uncertainty` / `uncertainty_samples` a run cannot take."""
  method = uncertainty.check_method(config.eval.get("uncertainty", "none"))
  if method == "mc_dropout" and not has_dropout(config):
    raise InputError("config.eval.uncertainty='mc_dropout': config.model.dropout is 0; MC "
                     "dropout needs a model with dropout (e.g. --config.model.dropout=0.1)")
  samples = config.eval.get("uncertainty_samples", 20)
  if int(samples) < 1:
    raise InputError(f"config.eval.uncertainty_samples={samples}: expected at least 1")


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
    plan: the dataset's preprocessing plan (`plan.json` of a run on a folder
      dataset), applied by `predict_volume`; None: images are taken at their
      own spacing, as the synthetic runs are.
  """
  config: ml_collections.ConfigDict
  segmenter: Segmenter
  plan: Optional[dict] = None

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
    out = self.segmenter(self._checked(image, name))
    return np.asarray(out[0], np.uint8), np.asarray(out[1], np.float32)

  def predict_uncertainty(self, image: np.ndarray, *, name: str = "image"
                          ) -> tuple[np.ndarray, np.ndarray, dict]:
    """`(labels, probabilities, maps)`: `predict` plus per-voxel uncertainty
    maps `(*S,)` float32: the segmenter's (`"entropy"`, `"mutual_information"`,
    `"variance"` of MC dropout, TTA or an ensemble), else `"entropy"`, the
    predictive entropy of the deterministic probabilities."""
    out = self.segmenter(self._checked(image, name))
    return (np.asarray(out[0], np.uint8), np.asarray(out[1], np.float32),
            uncertainty.prediction_maps(out))

  @property
  def has_plan(self) -> bool:
    """`predict_volume` resamples to the plan's spacing and back (no spacing warning needed)."""
    return self.plan is not None

  def predict_volume(self, volume, *, name: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """`(labels (*S) uint8, probabilities (*S, K) float32)` on the grid of `volume`.

    Args:
      volume: an `io.Volume` (or anything with `array` `(*S)` or `(*S, C)`,
        `spacing` (mm per array axis) and `affine`).
      name: starts the message of an `InputError` (e.g. the file).

    Without a plan this is `predict(volume.array)`. With one (nnU-Net,
    Isensee et al. 2021), the volume is cropped to its non-zero region,
    normalised per channel and resampled to the plan's target spacing
    (`preprocessing.preprocess_for_inference`), segmented, and the
    probabilities are resampled back and pasted into the original shape
    (`preprocessing.to_native`; outside the crop: background); labels are
    their argmax (a cascade's labels, which follow its rule, are mapped back
    themselves). The output has the input's shape, so the input's affine
    and spacing apply to it.
    """
    labels, probs, _ = self._on_input_grid(volume, name, self.predict)
    return labels, probs

  def predict_volume_uncertainty(self, volume, *, name: str = "image"
                                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """`predict_uncertainty` on the grid of `volume`: `(labels, probabilities, maps)`.

    As `predict_volume`; with a plan every map is mapped back onto the input's grid too
    (`preprocessing.to_native` kind "map": linearly, 0 outside the crop box, where the
    prediction is a certain background).
    """
    return self._on_input_grid(volume, name, self.predict_uncertainty)

  def _on_input_grid(self, volume, name: str, predict) -> tuple[np.ndarray, np.ndarray, dict]:
    """`predict` (`predict` or `predict_uncertainty`) of `volume`, with the plan's
    preprocessing and its inverse when the run has one; `(labels, probs, maps)`."""
    if self.plan is None:
      labels, probs, *maps = predict(volume.array, name=name)
      return labels, probs, (maps[0] if maps else {})
    image = self._checked(volume.array, name)
    image, record = apply_plan.preprocess_for_inference(
        image, tuple(float(s) for s in volume.spacing), volume.affine, self.plan, name=name)
    labels, probs, *maps = predict(image, name=name)
    probs = apply_plan.to_native(probs, record, kind="probabilities")
    if isinstance(self.segmenter, CascadeSegmenter):
      labels = apply_plan.to_native(labels, record, kind="labels")
    else:
      labels = probs.argmax(-1).astype(np.uint8)
    maps = {k: apply_plan.to_native(v, record, kind="map")
            for k, v in (maps[0] if maps else {}).items()}
    return np.asarray(labels, np.uint8), probs, maps

  def probabilities(self, image: np.ndarray, *, name: str = "image") -> np.ndarray:
    return self.predict(image, name=name)[1]

  def segment(self, image: np.ndarray, *, name: str = "image") -> np.ndarray:
    return self.predict(image, name=name)[0]


def load_predictor(workdir: Union[str, os.PathLike, Workdir], *,
                   mirror: bool = False, uncertainty_method: str = "none",
                   samples: Optional[int] = None) -> RunPredictor:
  """The trained run or cascade in `workdir`, as a `RunPredictor`.

  Args:
    workdir: a run's workdir (`config.json`, `checkpoints/`) or a cascade's
      (`config.json`, `stage1/`, `stage2/`).
    mirror: flip every spatial axis (test-time mirroring); otherwise each
      run's `config.eval.mirror_axes`.
    uncertainty_method: "none", "mc_dropout" or "tta" (an ordinary run only;
      see `run_segmenter`); `samples` MC-dropout passes (default
      `config.eval.uncertainty_samples`, else 20).
  Raises:
    InputError: a missing or unreadable workdir, config or checkpoint, or an
      uncertainty method the run cannot do (MC dropout without dropout, a cascade).
  """
  workdir = Workdir.of(workdir)
  config = workdir.read_config()
  plan = read_plan(workdir, config)
  axes = tuple(range(len(config.patch_size))) if mirror else None
  uncertainty.check_method(uncertainty_method, "uncertainty")
  if uncertainty_method != "none" and is_cascade(config):
    raise InputError(f"{workdir.path}: a cascade has no {uncertainty_method} uncertainty "
                     "(its predictive entropy is available with uncertainty 'none')")
  if uncertainty_method == "mc_dropout" and not has_dropout(config):
    raise InputError(f"{workdir.path}: config.model.dropout is 0; MC dropout needs a model "
                     "trained with dropout")
  if not is_cascade(config):
    config, model, variables = restore.load_run(workdir)
    return RunPredictor(config, run_segmenter(config, model, variables, mirror_axes=axes,
                                              uncertainty_method=uncertainty_method,
                                              samples=samples), plan)
  stages = []
  for stage in CASCADE_STAGES:
    stage_config, model, variables = restore.load_run(workdir.stage(stage))
    stages.append(window_predictor(stage_config, model, variables, mirror_axes=axes))
  return RunPredictor(config, CascadeSegmenter(*stages, margin=cascade_margin(config)), plan)


def read_plan(workdir: Workdir, config: ml_collections.ConfigDict) -> Optional[dict]:
  """The run's `plan.json` (a cascade's: its first stage's), or None (no plan)."""
  for folder in (workdir, workdir.stage(CASCADE_STAGES[0])) if is_cascade(config) else (workdir,):
    if folder.has_plan():
      return folder.read_plan()
  return None


def load_ensemble(workdirs, *, mirror: bool = False) -> RunPredictor:
  """A deep ensemble (Lakshminarayanan et al. 2017) of trained runs or cascades:
  `load_predictor` per workdir, mean of the probabilities, and the members'
  entropy, mutual information and variance maps (`predict_uncertainty`).

  Raises:
    InputError: fewer than two workdirs, or members that differ in classes,
      dimensions or input channels.
  """
  members = [load_predictor(w, mirror=mirror) for w in workdirs]
  if len(members) < 2:
    raise InputError(f"ensemble of {len(members)} workdir(s): expected at least 2")
  first = members[0]
  for w, m in zip(workdirs, members):
    if (m.class_names, m.spatial_dims, m.in_channels) != (
        first.class_names, first.spatial_dims, first.in_channels):
      raise InputError(f"{w}: classes {m.class_names}, {m.spatial_dims}D, {m.in_channels} "
                       f"channel(s); the first member has {first.class_names}, "
                       f"{first.spatial_dims}D, {first.in_channels}")
    if m.plan != first.plan:
      raise InputError(f"{w}: its plan.json differs from the first member's; an ensemble's "
                       "members must preprocess images alike")
  return RunPredictor(first.config, EnsembleSegmenter(tuple(m.segmenter for m in members)),
                      first.plan)
