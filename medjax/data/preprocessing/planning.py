"""The experiment plan of a dataset: target spacing, patch size, network topology, normalisation.

After nnU-Net's `ExperimentPlanner` (Isensee et al., Nature Methods 2021),
smaller:

* Target spacing: the median spacing; when the data is anisotropic (the
  median's largest spacing > 3x the others' largest, and that axis has
  fewer than a third of the voxels of the others) the low-resolution axis
  gets the 10th percentile of the cases' spacings on it instead (but at
  least the others' largest spacing), so that thin-slice cases are not
  thrown away.
* Patch size: nnU-Net starts from a patch of 256^3 (2D: 2048^2) voxels with
  the aspect ratio of the target spacing (the same extent in mm on every
  axis), clipped to the median shape, then repeatedly shrinks the axis with
  the largest patch / median-shape ratio by one pooling step until the
  network fits the GPU. The budget here is a number of voxels per patch,
  `max_patch_voxels` (default 128^3 / 2 = 1,048,576 for 3D, e.g. 64x128x128;
  512^2 = 262,144 for 2D): for a fixed network the activation memory of a
  training step grows linearly with the patch voxels (nnU-Net's own estimate
  sums the feature maps), so it is the quantity to budget. nnU-Net's 3d
  full-resolution patches on an 11 GB GPU with batch 2 are ~1-2.5 M voxels.
* Topology (`pool_and_kernel_sizes`): an axis is pooled while the pooled
  feature map keeps `>= min_feature_map` (4) voxels (an axis pooled alone
  needs 3x that before) and its spacing at that level is at most twice the
  finest among the axes still large enough to pool (nnU-Net v2's rule, with
  "at most twice" where nnU-Net has "less than twice", to agree with
  `anisotropic_plan`); at most `max_levels` levels. The conv window is 1 on an axis
  whose spacing is more than twice the finest, 3 otherwise (and stays 3 once
  3), as `medjax.models.unet.anisotropic_plan`; the formats match it:
  `kernel_sizes` has `num_levels` entries, `pool_sizes` `num_levels - 1`.
  The patch is a multiple of the total pooling per axis.
* Normalisation per channel from its name (`normalization.scheme_for`) and
  the fingerprint's foreground statistics.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from medjax.data.preprocessing import normalization, resampling
from medjax.errors import InputError

PLAN_VERSION = 1
MIN_FEATURE_MAP = 4
MAX_LEVELS = 6
DEFAULT_MAX_PATCH_VOXELS = {2: 512 ** 2, 3: 128 ** 3 // 2}
_INITIAL_VOXELS = {2: 2048 ** 2, 3: 256 ** 3}


def target_spacing(fingerprint: dict, threshold: float = resampling.ANISOTROPY_THRESHOLD
                   ) -> tuple[list[float], Optional[int]]:
  """nnU-Net's full-resolution target spacing and the anisotropic axis (or None)."""
  spacings = np.asarray(fingerprint["spacings"], np.float64)
  shapes = np.asarray(fingerprint["shapes_after_crop"], np.float64)
  target = np.percentile(spacings, 50, axis=0)
  size = np.percentile(shapes, 50, axis=0)
  if target.size < 2:
    return target.tolist(), None
  worst = int(np.argmax(target))
  others = [a for a in range(target.size) if a != worst]
  aniso_spacing = target[worst] > threshold * max(target[others])
  aniso_voxels = size[worst] * threshold < min(size[others])
  if not (aniso_spacing and aniso_voxels):
    return target.tolist(), None
  low = float(np.percentile(spacings[:, worst], 10))
  if low < max(target[others]):
    low = max(max(target[others]), low) + 1e-5
  target[worst] = low
  return target.tolist(), worst


def pool_and_kernel_sizes(spacing: Sequence[float], patch_size: Sequence[int], *,
                          min_feature_map: int = MIN_FEATURE_MAP, max_levels: int = MAX_LEVELS
                          ) -> tuple[list[list[int]], list[list[int]], list[int]]:
  """Pooling and conv windows for a patch at `spacing` (nnU-Net's `get_pool_and_conv_props`).

  Returns:
    `(pool_sizes (levels - 1) x ndim, kernel_sizes levels x ndim,
    divisor per axis)`: the patch must be a multiple of `divisor`.
  """
  ndim = len(spacing)
  current_spacing = [float(s) for s in spacing]
  size = [float(n) for n in patch_size]
  kernel = [1] * ndim
  pools, kernels = [], []
  while len(pools) < max_levels - 1:
    finest = min(current_spacing)
    for axis in range(ndim):
      if current_spacing[axis] <= 2.0 * finest:
        kernel[axis] = 3
    large = [a for a in range(ndim) if size[a] >= 2 * min_feature_map]
    finest_large = min((current_spacing[a] for a in large), default=0.0)
    valid = [a for a in large if current_spacing[a] <= 2.0 * finest_large]
    if len(valid) == 1 and size[valid[0]] < 3 * min_feature_map:
      valid = []
    if not valid:
      break
    kernels.append(list(kernel))
    pool = [2 if a in valid else 1 for a in range(ndim)]
    pools.append(pool)
    for a in valid:
      current_spacing[a] *= 2
      size[a] = np.ceil(size[a] / 2)
  finest = min(current_spacing)
  kernels.append([3 if (kernel[a] == 3 or current_spacing[a] <= 2.0 * finest) else 1
                  for a in range(ndim)])
  divisor = [int(np.prod([p[a] for p in pools])) for a in range(ndim)]
  return pools, kernels, divisor


def _round_up(patch: Sequence[int], divisor: Sequence[int]) -> list[int]:
  return [int(np.ceil(p / d) * d) for p, d in zip(patch, divisor)]


def plan_patch_size(spacing: Sequence[float], median_shape: Sequence[float],
                    max_patch_voxels: int, *, min_feature_map: int = MIN_FEATURE_MAP,
                    max_levels: int = MAX_LEVELS) -> list[int]:
  """nnU-Net's patch size: a 256^3 (2D 2048^2) voxel patch of equal extent in mm,
  clipped to `median_shape`, shrunk one pooling step at a time on the axis of
  largest patch / median-shape ratio until it has at most `max_patch_voxels`."""
  ndim = len(spacing)
  inverse = 1.0 / np.asarray(spacing, np.float64)
  scale = (_INITIAL_VOXELS[ndim] / np.prod(inverse)) ** (1.0 / ndim)
  median = np.maximum(np.asarray(median_shape, np.float64), 1.0)
  patch = [max(int(round(v)), 1) for v in np.minimum(inverse * scale, median)]
  props = lambda p: pool_and_kernel_sizes(spacing, p, min_feature_map=min_feature_map,
                                          max_levels=max_levels)
  patch = _round_up(patch, props(patch)[2])
  while int(np.prod(patch)) > max_patch_voxels:
    for axis in np.argsort([p / m for p, m in zip(patch, median)])[::-1]:
      trial = list(patch)
      trial[axis] -= props(patch)[2][axis]
      if trial[axis] < 1:
        continue
      step = props(trial)[2][axis]
      if patch[axis] - step >= 1:
        patch[axis] -= step
        break
    else:
      break
    # Down, not up as nnU-Net: rounding up could undo the step and never end.
    patch = [max(p // d, 1) * d for p, d in zip(patch, props(patch)[2])]
  return patch


def _check_patch(patch_size: Sequence[Any], ndim: int) -> list[int]:
  try:
    patch = [int(p) for p in patch_size]
  except (TypeError, ValueError):
    raise InputError(f"patch_size: expected {ndim} positive integers, got {patch_size!r}") from None
  if len(patch) != ndim or any(p < 1 for p in patch) or any(
      float(p) != float(q) for p, q in zip(patch, patch_size)):
    raise InputError(f"patch_size: expected {ndim} positive integers, got {list(patch_size)}")
  return patch


def normalization_spec(channel_name: str, intensity: dict, use_nonzero_mask: bool
                       ) -> dict[str, Any]:
  """The plan's normalisation entry for one channel (see `normalization`)."""
  scheme = normalization.scheme_for(channel_name)
  if scheme == "ct":
    if intensity.get("mean") is None:
      raise InputError(f"channel {channel_name!r}: CT normalisation needs foreground intensities, "
                       "but no case has a labelled (label > 0) voxel")
    return {"scheme": "ct", "clip": [intensity["percentile_00_5"], intensity["percentile_99_5"]],
            "mean": intensity["mean"], "std": intensity["std"]}
  if scheme == "zscore":
    return {"scheme": "zscore", "use_nonzero_mask": bool(use_nonzero_mask)}
  return {"scheme": scheme}


def make_plan(fingerprint: dict, *, num_classes: int, patch_size: Optional[Sequence[int]] = None,
              max_patch_voxels: Optional[int] = None, min_feature_map: int = MIN_FEATURE_MAP,
              max_levels: int = MAX_LEVELS) -> dict[str, Any]:
  """The JSON-able plan of a dataset from its `fingerprint.dataset_fingerprint`.

  Args:
    fingerprint: the dataset fingerprint.
    num_classes: classes including background.
    patch_size: overrides the planned patch (validated: one positive integer
      per axis, a multiple of the network's total pooling on each axis; the
      budget is not applied to it).
    max_patch_voxels: the memory budget (voxels per patch; default 128^3 / 2
      in 3D, 512^2 in 2D; see the module docstring).
    min_feature_map, max_levels: smallest feature map edge and most levels.

  Returns:
    `{"version", "target_spacing", "anisotropic_axis", "median_shape"
    (resampled), "patch_size", "pool_sizes", "kernel_sizes", "num_levels",
    "max_patch_voxels", "normalization": [spec per channel], "channel_names",
    "num_classes"}`.
  """
  spacing, axis = target_spacing(fingerprint)
  ndim = len(spacing)
  if ndim not in (2, 3):
    raise InputError(f"plan: data must be 2D or 3D, the fingerprint has {ndim} spatial axes")
  if num_classes < 2:
    raise InputError(f"plan: num_classes must be >= 2 (background included), got {num_classes}")
  budget = int(max_patch_voxels or DEFAULT_MAX_PATCH_VOXELS[ndim])
  # nnU-Net: the median of each case's shape after resampling to the target spacing.
  median_shape = np.median([resampling.resampled_shape(shape, case_spacing, spacing)
                            for shape, case_spacing in zip(fingerprint["shapes_after_crop"],
                                                           fingerprint["spacings"])], axis=0)
  if patch_size is None:
    patch = plan_patch_size(spacing, median_shape, budget, min_feature_map=min_feature_map,
                            max_levels=max_levels)
  else:
    patch = _check_patch(patch_size, ndim)
  pools, kernels, divisor = pool_and_kernel_sizes(spacing, patch, min_feature_map=min_feature_map,
                                                  max_levels=max_levels)
  if any(p % d for p, d in zip(patch, divisor)):
    raise InputError(f"patch_size {patch}: each axis must be a multiple of the network's total "
                     f"pooling {divisor} (pools {pools}); e.g. {_round_up(patch, divisor)}")
  names = fingerprint["channel_names"]
  use_mask = fingerprint.get("median_relative_size_after_crop", 1.0) < 0.75
  return {
      "version": PLAN_VERSION,
      "target_spacing": [float(s) for s in spacing],
      "anisotropic_axis": axis,
      "median_shape": [float(s) for s in median_shape],
      "patch_size": [int(p) for p in patch],
      "pool_sizes": pools,
      "kernel_sizes": kernels,
      "num_levels": len(kernels),
      "max_patch_voxels": budget,
      "normalization": [normalization_spec(n, stats, use_mask)
                        for n, stats in zip(names, fingerprint["intensity"])],
      "channel_names": list(names),
      "num_classes": int(num_classes),
  }
