"""Patch sampling with foreground oversampling, as in nnU-Net.

Training on patches of large volumes rarely sees a small lesion if patch
positions are uniform. nnU-Net (Isensee et al., "nnU-Net: a self-configuring
method for deep learning-based biomedical image segmentation", Nature Methods
2021) forces a fraction of the patches of each batch (its
`oversample_foreground_percent`, 0.33) to contain foreground: a foreground
class present in the case is chosen uniformly (so a rare tumour is picked as
often as the large organ), then a random voxel of that class, and the patch is
centred on it. Voxel locations per class are computed once per case
(`class_locations`, subsampled like nnU-Net to at most 10000 per class but at
least 1 %) so that sampling costs only the patch copy.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from medjax.errors import InputError

Locations = dict[int, np.ndarray]  # class -> (M, ndim) int32 voxel indices


class PreparedCase(NamedTuple):
  """A case padded to at least the patch size, with its foreground locations."""
  image: np.ndarray  # (*spatial) or (*spatial, C)
  label: np.ndarray  # (*spatial)
  locations: Locations


def class_locations(label: np.ndarray, classes: Optional[Sequence[int]] = None, *,
                    max_per_class: int = 10000, min_coverage: float = 0.01) -> Locations:
  """Voxel indices of each foreground class present in `label`.

  Args:
    label: integer map `(*spatial)`.
    classes: the foreground classes to index; default every value > 0 present.
    max_per_class, min_coverage: keep at most `max(max_per_class,
      min_coverage * count)` voxels per class, drawn with a fixed seed (the
      result is deterministic).

  Returns:
    `{class: (M, ndim) int32}` for the classes with at least one voxel.
  """
  label = np.asarray(label)
  if classes is None:
    classes = [int(c) for c in np.unique(label) if c > 0]
  rng = np.random.default_rng(1234)
  out: Locations = {}
  for c in classes:
    flat = np.flatnonzero(label == c)
    if flat.size == 0:
      continue
    keep = max(min(max_per_class, flat.size), int(np.ceil(flat.size * min_coverage)))
    if keep < flat.size:
      flat = np.sort(rng.choice(flat, keep, replace=False))
    out[int(c)] = np.stack(np.unravel_index(flat, label.shape), axis=1).astype(np.int32)
  return out


def pad_to_patch(image: np.ndarray, label: np.ndarray, patch_size: Sequence[int],
                 pad_value: Optional[float] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pads image and label (centred) so every spatial dim is >= `patch_size`.

  The image is padded with `pad_value` (default: its minimum, i.e. air for
  CT), the label with 0 (background).

  Returns:
    `(image, label, offset)`: `offset[i]` voxels were added before axis i.
  """
  spatial = label.shape
  if len(patch_size) != len(spatial):
    raise InputError(f"patch_size {tuple(patch_size)}: expected {len(spatial)} dims "
                     f"for data of shape {spatial}")
  missing = [max(p - n, 0) for p, n in zip(patch_size, spatial)]
  offset = np.array([m // 2 for m in missing], np.int32)
  if not any(missing):
    return image, label, offset
  widths = [(m // 2, m - m // 2) for m in missing]
  value = float(np.min(image)) if pad_value is None else float(pad_value)
  image_widths = widths + [(0, 0)] * (image.ndim - label.ndim)
  image = np.pad(image, image_widths, constant_values=value)
  label = np.pad(label, widths, constant_values=0)
  return image, label, offset


def prepare_case(image: np.ndarray, label: np.ndarray, patch_size: Sequence[int],
                 foreground_classes: Optional[Sequence[int]] = None,
                 pad_value: Optional[float] = None) -> PreparedCase:
  """Pads a case to the patch size and indexes its foreground, once per case."""
  image, label, _ = pad_to_patch(image, label, patch_size, pad_value)
  return PreparedCase(image, label, class_locations(label, foreground_classes))


def _patch_start(rng: np.random.Generator, shape: Sequence[int], patch_size: Sequence[int],
                 centre: Optional[np.ndarray]) -> list[int]:
  start = []
  for axis, (n, p) in enumerate(zip(shape, patch_size)):
    if centre is None:
      start.append(int(rng.integers(0, n - p + 1)))
      continue
    # Centre on the voxel with a small jitter (<= p/4, so the voxel stays in
    # the patch), then shift the patch back inside the volume.
    jitter = int(rng.integers(-(p // 4), p // 4 + 1))
    start.append(int(np.clip(centre[axis] - p // 2 + jitter, 0, n - p)))
  return start


def sample_patch(rng: np.random.Generator, image: np.ndarray, label: np.ndarray,
                 patch_size: Sequence[int], *, force_foreground: bool,
                 foreground_classes: Optional[Sequence[int]] = None,
                 locations: Optional[Locations] = None,
                 pad_value: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
  """One training patch, foreground-forced or uniform (nnU-Net, Isensee 2021).

  Args:
    rng: numpy generator; the patch is a pure function of its state.
    image: `(*spatial)` or `(*spatial, C)`.
    label: integer `(*spatial)`.
    patch_size: spatial patch shape.
    force_foreground: centre the patch on a voxel of a foreground class
      chosen uniformly among the classes present (falls back to a uniform
      location when the case has no foreground).
    foreground_classes: classes that count as foreground (default all > 0).
    locations: precomputed `class_locations(label)` (of the arrays as
      passed); computed here when None.
    pad_value: image padding when the case is smaller than the patch
      (default the image minimum); labels are padded with 0.

  Returns:
    `(image_patch, label_patch)` of spatial shape `patch_size`.
  """
  patch_size = tuple(int(p) for p in patch_size)
  image, label, offset = pad_to_patch(image, label, patch_size, pad_value)
  centre = None
  if force_foreground:
    if locations is None:
      locations = class_locations(label, foreground_classes)
      offset = np.zeros_like(offset)  # computed on the padded label
    classes = sorted(c for c, locs in locations.items()
                     if len(locs) and (foreground_classes is None or c in foreground_classes))
    if classes:
      locs = locations[classes[int(rng.integers(len(classes)))]]
      centre = locs[int(rng.integers(len(locs)))] + offset
  start = _patch_start(rng, label.shape, patch_size, centre)
  window = tuple(slice(s, s + p) for s, p in zip(start, patch_size))
  return np.array(image[window]), np.array(label[window])
