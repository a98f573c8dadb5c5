"""Small, named preprocessing ops on numpy arrays, each tested alone.

Intensity normalisation follows the CT scheme of nnU-Net (Isensee et al.,
Nature Methods 2021): clip to an intensity window, then z-score.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import numpy as np

from medjax.errors import InputError


def normalize_ct(image: np.ndarray, clip: Optional[tuple[float, float]] = (-200.0, 300.0),
                 mean: Optional[float] = None, std: Optional[float] = None) -> np.ndarray:
  """Clips CT intensities to a HU window and z-scores them; float32, same shape.

  Args:
    image: intensities in HU, any shape.
    clip: `(low, high)` HU window (default a soft-tissue window), or None.
    mean, std: normalisation statistics (e.g. of the training foreground,
      as nnU-Net does); when None, those of the clipped image itself.
  """
  image = np.asarray(image, np.float32)
  if clip is not None:
    image = np.clip(image, clip[0], clip[1])
  mean = float(image.mean()) if mean is None else float(mean)
  std = float(image.std()) if std is None else float(std)
  return ((image - mean) / max(std, 1e-6)).astype(np.float32)


def keep_intensities(image: np.ndarray) -> np.ndarray:
  """The identity normalisation (as float32), for images normalised already,
  e.g. by a folder dataset's plan at prepare time (`medjax.data.preprocessing.apply_plan`)."""
  return np.asarray(image, np.float32)


# One channel `(*S)` -> float32 `(*S)`.
Normalize = Callable[[np.ndarray], np.ndarray]

# The lung window of chest-CT detection: air to bone, so that lung (-850 HU), ground-glass
# (-650..-300 HU) and solid (-100..100 HU) nodules keep their contrast; fixed statistics
# (the window's centre and half width), so every patch keeps its HU level.
LUNG_WINDOW = (-1000.0, 400.0)
normalize_lung = functools.partial(normalize_ct, clip=LUNG_WINDOW, mean=-300.0, std=700.0)

# `config.normalization` -> the per-channel normalisation of training and prediction.
NORMALIZATIONS = {"ct_window": normalize_ct, "lung_window": normalize_lung,
                  "none": keep_intensities}


def fixed_window(mean: float, std: float, clip: tuple[float, float] = (-200.0, 300.0)) -> Normalize:
  """`normalize_ct` with fixed statistics: every image clipped to `clip` HU, then
  `(x - mean) / std`. For small patches, whose own statistics would erase
  their HU level (which tells muscle from organ)."""
  if not std > 0:
    raise InputError(f"intensity std={std}: expected > 0")
  return functools.partial(normalize_ct, clip=tuple(clip), mean=float(mean), std=float(std))


def per_channel(normalize: Normalize) -> Callable[[np.ndarray], np.ndarray]:
  """`normalize` applied to each channel of a channels-last image `(*S, C)` -> float32 `(*S, C)`."""
  def apply(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return np.stack([np.asarray(normalize(image[..., c]), np.float32)
                     for c in range(image.shape[-1])], axis=-1)
  return apply


normalize_ct_channels = per_channel(normalize_ct)
normalize_ct_channels.__doc__ = "`normalize_ct` of each channel of `(*S, C)` (`per_channel`)."


def random_flip(rng: np.random.Generator, image: np.ndarray, label: np.ndarray,
                axes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Flips image and label together along each axis in `axes` with probability 1/2.

  `axes` index the spatial axes shared by image and label (a trailing
  channel axis of `image`, if any, is never flipped).
  """
  for axis in axes:
    if axis >= label.ndim or axis < -label.ndim:
      raise InputError(f"flip_axes: axis {axis} out of range for {label.ndim}D data")
    if rng.random() < 0.5:
      image = np.flip(image, axis)
      label = np.flip(label, axis)
  return np.ascontiguousarray(image), np.ascontiguousarray(label)


def check_image(image: np.ndarray, name: str) -> np.ndarray:
  """Returns `image` unchanged; InputError naming `name` if it has NaN or inf."""
  image = np.asarray(image)
  if not np.issubdtype(image.dtype, np.number):
    raise InputError(f"{name}: expected a numeric image, got dtype {image.dtype}")
  if np.issubdtype(image.dtype, np.floating):
    bad = ~np.isfinite(image)
    if bad.any():
      raise InputError(f"{name}: image has {int(bad.sum())} NaN/inf voxels; expected finite intensities")
  return image


def check_labels(label: np.ndarray, num_classes: int, name: str) -> np.ndarray:
  """Returns `label` unchanged; InputError naming `name` for values outside [0, num_classes)."""
  label = np.asarray(label)
  if label.size == 0:
    return label
  if np.issubdtype(label.dtype, np.floating):
    if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
      raise InputError(f"{name}: labels must be integers in [0, {num_classes}), got non-integer values")
  low, high = label.min(), label.max()
  if low < 0 or high >= num_classes:
    raise InputError(f"{name}: labels must be in [0, {num_classes}), found values in "
                     f"[{low:g}, {high:g}]")
  return label
