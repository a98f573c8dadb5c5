"""nnU-Net preprocessing of one case under a plan, and its inverse (Isensee et al., Nature Methods 2021).

`preprocess_case`: crop to the non-zero region of all channels ->
normalise each channel (`normalization`, the plan's spec) -> resample to the
plan's target spacing (`resampling`: images cubic, labels per-class linear,
the anisotropic axis nearest). The `record` it returns holds what
`to_native` needs to map a prediction back onto the original grid:
resample to the cropped shape, then paste into the original shape (outside
the crop box: label 0, probability 1 for class 0). The affine is kept in the
record for writing the result; the voxel grid (shape, axis order) is never
changed, only sampled more or less densely, so the original affine applies
to the output of `to_native` as it is.

Memory (one channel at a time, see `resampling`): for a case of `F` bytes in
float32, about the input + `F` (normalised crop) + the resampled output.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
from scipy import ndimage

from medjax.data.preprocessing import fingerprint, normalization, resampling
from medjax.errors import InputError


class PreprocessedCase(NamedTuple):
  """`image` float32 `(*S', C)`, `label` uint8 `(*S')` or None, `record` (JSON-able dict)."""
  image: np.ndarray
  label: Optional[np.ndarray]
  record: dict


def _box_list(box: Sequence[slice]) -> list[list[int]]:
  return [[int(s.start), int(s.stop)] for s in box]


def _box_slices(record: dict) -> tuple[slice, ...]:
  return tuple(slice(int(a), int(b)) for a, b in record["crop_box"])


def _affine_list(affine: Any, name: str) -> list[list[float]]:
  affine = np.asarray(affine, np.float64)
  if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
    raise InputError(f"{name}: affine must be a finite 4x4 matrix, got shape {affine.shape}")
  return affine.tolist()


def _check_plan(plan: dict, channels: int, ndim: int, name: str) -> None:
  for key in ("target_spacing", "normalization"):
    if key not in plan:
      raise InputError(f"{name}: the plan has no {key!r}")
  if len(plan["normalization"]) != channels:
    raise InputError(f"{name}: image has {channels} channels, the plan normalises "
                     f"{len(plan['normalization'])}")
  if len(plan["target_spacing"]) != ndim:
    raise InputError(f"{name}: image is {ndim}D, the plan's target spacing "
                     f"{plan['target_spacing']} is {len(plan['target_spacing'])}D")


def preprocess_case(image: np.ndarray, label: Optional[np.ndarray], spacing: Sequence[float],
                    affine: Any, plan: dict, *, name: str = "case") -> PreprocessedCase:
  """Crop -> normalise -> resample one case, as nnU-Net.

  Args:
    image: `(*S, C)` any real dtype.
    label: `(*S)` integer in [0, 255], or None.
    spacing: mm per spatial axis of `image`.
    affine: 4x4 voxel-to-world matrix (kept in the record), or None.
    plan: `planning.make_plan` output.
    name: names the case in errors.

  Returns:
    `PreprocessedCase(image float32 (*S', C), label uint8 (*S') | None, record)`;
    `record` = `{"original_shape", "original_spacing", "original_affine",
    "crop_box": [[start, stop] per axis], "cropped_shape",
    "preprocessed_shape", "target_spacing"}`.
  """
  image = np.asarray(image)
  fingerprint.check_case(image, label, spacing, name)
  spatial = image.shape[:-1]
  _check_plan(plan, image.shape[-1], len(spatial), name)
  if label is not None:
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() > 255):
      raise InputError(f"{name}: labels must be in [0, 255], found [{label.min()}, {label.max()}]")
  box = fingerprint.nonzero_box(image)
  cropped = image[box]
  cropped_shape = cropped.shape[:-1]
  target = [float(s) for s in plan["target_spacing"]]
  new_shape = resampling.resampled_shape(cropped_shape, spacing, target)
  separate = resampling.separate_axis(spacing, target)
  specs = plan["normalization"]
  mask = None
  if any(spec.get("use_nonzero_mask") for spec in specs):
    mask = ndimage.binary_fill_holes(fingerprint.nonzero_mask(cropped))
  out = np.empty(new_shape + (image.shape[-1],), np.float32)
  for c, spec in enumerate(specs):
    if new_shape == cropped_shape:  # nothing to resample: normalise straight into the output
      normalization.normalize_channel(cropped[..., c], spec, mask, out=out[..., c])
      continue
    channel = normalization.normalize_channel(cropped[..., c], spec, mask)
    resampling.resample_image(channel, new_shape, order=3, separate=separate, out=out[..., c],
                              overwrite_input=True)
    del channel
  new_label = None
  if label is not None:
    new_label = resampling.resample_labels(label[box].astype(np.uint8, copy=False), new_shape,
                                           order=1, separate=separate)
  record = {
      "original_shape": [int(n) for n in spatial],
      "original_spacing": [float(s) for s in spacing],
      "original_affine": None if affine is None else _affine_list(affine, name),
      "crop_box": _box_list(box),
      "cropped_shape": [int(n) for n in cropped_shape],
      "preprocessed_shape": [int(n) for n in new_shape],
      "target_spacing": target,
  }
  return PreprocessedCase(out, new_label, record)


def preprocess_for_inference(volume_array: np.ndarray, spacing: Sequence[float], affine: Any,
                             plan: dict, *, name: str = "volume") -> tuple[np.ndarray, dict]:
  """`preprocess_case` of one unlabelled volume `(*S)` or `(*S, C)`: `(image (*S', C), record)`."""
  volume_array = np.asarray(volume_array)
  if volume_array.ndim == len(spacing):
    volume_array = volume_array[..., None]
  case = preprocess_case(volume_array, None, spacing, affine, plan, name=name)
  return case.image, case.record


def to_native(array: np.ndarray, record: dict, *, kind: str = "labels") -> np.ndarray:
  """Maps a prediction on the preprocessed grid back to the original one (`preprocess_case`'s inverse).

  Args:
    array: labels `(*S')` integer (`kind="labels"`) or probabilities
      `(*S', K)` (`kind="probabilities"`), `S'` = `record["preprocessed_shape"]`.
    record: the case's record.
    kind: "labels": per-class linear resampling to the cropped shape
      (anisotropic axis nearest), 0 outside the crop box; "probabilities":
      linear, renormalised, `[1, 0, ...]` outside the crop box; "map": a per-voxel
      scalar map `(*S')` (an uncertainty map) float32, linear, clipped at 0, and 0
      outside the crop box (where the probabilities are a certain `[1, 0, ...]`).

  Returns:
    `(*record["original_shape"])` labels (same dtype) or
    `(*record["original_shape"], K)` float32.
  """
  array = np.asarray(array)
  pre = tuple(int(n) for n in record["preprocessed_shape"])
  cropped = tuple(int(n) for n in record["cropped_shape"])
  original = tuple(int(n) for n in record["original_shape"])
  separate = resampling.separate_axis(record["original_spacing"], record["target_spacing"])
  box = _box_slices(record)
  if array.shape[:len(pre)] != pre:
    raise InputError(f"to_native: array of shape {array.shape} does not start with the "
                     f"preprocessed shape {list(pre)}")
  if kind == "labels":
    if array.ndim != len(pre):
      raise InputError(f"to_native: labels must be {list(pre)}, got {array.shape}")
    out = np.zeros(original, array.dtype)
    out[box] = resampling.resample_labels(array, cropped, order=1, separate=separate)
    return out
  if kind == "probabilities":
    if array.ndim != len(pre) + 1:
      raise InputError(f"to_native: probabilities must be {list(pre)} + [K], got {array.shape}")
    out = np.zeros(original + array.shape[-1:], np.float32)
    out[..., 0] = 1.0
    resampling.resample_probabilities(array, cropped, separate=separate, out=out[box])
    return out
  if kind == "map":
    if array.ndim != len(pre):
      raise InputError(f"to_native: a map must be {list(pre)}, got {array.shape}")
    out = np.zeros(original, np.float32)
    resampling.resample_image(array.astype(np.float32), cropped, order=1, separate=separate,
                              out=out[box])
    np.clip(out, 0.0, None, out=out)
    return out
  raise InputError(f"to_native: kind must be 'labels', 'probabilities' or 'map', got {kind!r}")
