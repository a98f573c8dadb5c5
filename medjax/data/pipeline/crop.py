"""Bounding-box crops for nested structures: the organ box a cascade's second stage sees.

Christ et al. (2016) segment the lesion only inside the organ found first;
training the second stage on crops to the ground-truth organ box (plus a
margin) makes the tiny lesion far less rare in its input. These helpers are
host-side NumPy (box sizes vary from case to case).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

BBox = tuple  # one slice per spatial dim


def organ_bbox(mask, margin: Union[int, Sequence[int]] = 0) -> Optional[BBox]:
  """Bounding box of the non-zero voxels of `mask` `(*S,)`, grown by `margin`
  voxels on each side (an int or one per axis) and clipped to the array.

  Returns a tuple of slices, or None when the mask is empty.
  """
  mask = np.asarray(mask) != 0
  if not mask.any():
    return None
  margins = (margin,) * mask.ndim if np.isscalar(margin) else tuple(margin)
  if len(margins) != mask.ndim:
    raise ValueError(f"margin {margin} has {len(margins)} values for a {mask.ndim}-d mask")
  box = []
  for axis, (size, m) in enumerate(zip(mask.shape, margins)):
    other = tuple(a for a in range(mask.ndim) if a != axis)
    idx = np.flatnonzero(mask.any(axis=other))
    box.append(slice(max(int(idx[0]) - int(m), 0), min(int(idx[-1]) + 1 + int(m), size)))
  return tuple(box)


def crop_to_bbox(array, bbox: BBox):
  """`array[bbox]`: crops the leading `len(bbox)` (spatial) dims; trailing dims
  (channels) are kept. `(*S, ...) -> (*S_box, ...)`."""
  return array[tuple(bbox)]


def paste_from_bbox(crop, bbox: BBox, shape: Sequence[int], fill=0) -> np.ndarray:
  """Inverse of `crop_to_bbox`: an array of `shape` (the full spatial shape; the
  crop's trailing dims are appended if `shape` omits them) filled with `fill`,
  with `crop` written at `bbox`."""
  crop = np.asarray(crop)
  shape = tuple(shape)
  if len(shape) == len(bbox):
    shape = shape + crop.shape[len(bbox):]
  out = np.full(shape, fill, dtype=crop.dtype)
  out[tuple(bbox)] = crop
  return out


class OrganCropSource:
  """A random-access source whose cases are cropped to the box of `label > 0` + margin.

  The training source of a cascade's second stage: each case's image and
  label cut to the ground-truth organ box (a case without foreground is kept
  whole).

  Args:
    source: cases with `image` and `label` `(*S,)`.
    margin: voxels added on each side, an int or one per spatial axis.
  """

  def __init__(self, source, margin: Union[int, Sequence[int]]):
    self._source = source
    self._margin = int(margin) if np.isscalar(margin) else tuple(int(m) for m in margin)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = dict(self._source[index])
    label = np.asarray(example["label"])
    bbox = organ_bbox(label > 0, self._margin)
    if bbox is not None:
      example["image"] = crop_to_bbox(np.asarray(example["image"]), bbox)
      example["label"] = crop_to_bbox(label, bbox)
    return example
