"""One detection example in the shape every detection builder writes (TFDS features).

A case (CT volume + lesions) becomes a fixed-shape example, ground truth
padded to `max_boxes` so batches are jit-compatible; a case without any lesion
has `num_boxes == 0` and is a normal case everywhere:

* `image` `(D, H, W, C)` float32 (HU for CT, not normalised);
* `instances` `(D, H, W)` int16: 0 background, i = 1..num_boxes lesion i (the
  order of `boxes`);
* `boxes` `(max_boxes, 6)` float32 voxel boxes `(z1, y1, x1, z2, y2, x2)` in
  array-axis order, half-open (a box covers `z1 <= z < z2`: an instance's
  extent is `min .. max + 1`), rows past `num_boxes` 0;
* `classes` `(max_boxes,)` int32, 0-based foreground class, -1 padding;
* `num_boxes` int32;
* `diameters_mm` `(max_boxes,)` float32: the annotated diameter, or the
  equivalent-sphere diameter of the instance where none is annotated;
* `centers_world` `(max_boxes, 3)` float32: RAS mm, the annotated centre, or
  the centre of the instance's box where none is annotated;
* `excluded_world` `(max_excluded, 4)` float32: findings that are neither hits
  nor false positives (LUNA16's irrelevant findings): RAS centre x, y, z and
  diameter mm; `num_excluded` int32;
* `spacing` `(3,)` float32 mm per array axis; `affine` `(4, 4)` float32 with
  `world (RAS mm) = affine @ [i, j, k, 1]` for the array indices `(i, j, k)`
  of axes 0, 1, 2 (`array_axes_affine` derives it from a file's affine as
  `medjax.data.io.read_image` returns it, whose columns follow the file's
  voxel axes, the array axes reversed); `case`: the case id.

`make_example` checks what it is given (boxes inside the image, instance ids
1..N, no more than `max_boxes` lesions) and raises a one-line `InputError`
naming the case.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from medjax.detection import boxes as box_ops
from medjax.errors import InputError

MAX_BOXES = 16
MAX_EXCLUDED = 16


def features(max_boxes: int = MAX_BOXES, max_excluded: int = MAX_EXCLUDED,
             channels: Optional[int] = None) -> tfds.features.FeaturesDict:
  """The TFDS features of a 3D detection example (module docstring)."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(None, None, None, channels), dtype=np.float32,
                                    encoding="zlib"),
      "instances": tfds.features.Tensor(shape=(None, None, None), dtype=np.int16,
                                        encoding="zlib"),
      "boxes": tfds.features.Tensor(shape=(max_boxes, 6), dtype=np.float32),
      "classes": tfds.features.Tensor(shape=(max_boxes,), dtype=np.int32),
      "num_boxes": tfds.features.Tensor(shape=(), dtype=np.int32),
      "diameters_mm": tfds.features.Tensor(shape=(max_boxes,), dtype=np.float32),
      "centers_world": tfds.features.Tensor(shape=(max_boxes, 3), dtype=np.float32),
      "excluded_world": tfds.features.Tensor(shape=(max_excluded, 4), dtype=np.float32),
      "num_excluded": tfds.features.Tensor(shape=(), dtype=np.int32),
      "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
      "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float32),
      "case": tfds.features.Text(),
  })


def array_axes_affine(file_affine: np.ndarray) -> np.ndarray:
  """`world = A @ [i, j, k, 1]` for array indices from `read_image`'s affine (its columns follow
  the file's voxel axes, which are the array axes reversed)."""
  affine = np.asarray(file_affine, np.float64)
  return affine[:, [2, 1, 0, 3]]


def instance_boxes(instances: np.ndarray, count: int) -> np.ndarray:
  """`(count, 6)` half-open voxel boxes of instances 1..count (`boxes.boxes_from_instances`;
  an id without voxels keeps a zero row)."""
  found, ids = box_ops.boxes_from_instances(instances)
  out = np.zeros((count, 6), np.float32)
  keep = (ids >= 1) & (ids <= count)
  out[ids[keep] - 1] = found[keep]
  return out


def equivalent_diameters(instances: np.ndarray, count: int,
                         spacing: Sequence[float]) -> np.ndarray:
  """`(count,)` diameters (mm) of the spheres with the volume of instances 1..count."""
  voxels = np.bincount(instances.ravel().astype(np.int64), minlength=count + 1)[1:count + 1]
  volume = voxels * float(np.prod(spacing))
  return (6 * volume / np.pi) ** (1 / 3)


def make_example(case: str, image: np.ndarray, instances: np.ndarray, classes: Sequence[int],
                 spacing: Sequence[float], affine: np.ndarray, *,
                 diameters_mm: Optional[Sequence[float]] = None,
                 centers_world: Optional[Sequence[Sequence[float]]] = None,
                 excluded_world: Sequence[Sequence[float]] = (),
                 max_boxes: int = MAX_BOXES, max_excluded: int = MAX_EXCLUDED,
                 where: str = "") -> dict[str, Any]:
  """The padded example of one case (module docstring).

  Args:
    case: the case id.
    image: `(D, H, W)` or `(D, H, W, C)`.
    instances: `(D, H, W)` integer map, lesions numbered 1..len(classes).
    classes: 0-based class of each lesion, in instance order.
    spacing: mm per array axis.
    affine: array-axis affine (module docstring).
    diameters_mm: annotated diameters; default the instances' equivalent-sphere diameters.
    centers_world: annotated centres (RAS mm); default the centres of the instances' boxes.
    excluded_world: rows `(x, y, z, diameter mm)` of excluded findings.
    max_boxes, max_excluded: padded lengths.
    where: the file(s) named in error messages.

  Raises:
    InputError: one line naming the case (and `where`): instance ids other than
      1..len(classes), a lesion without voxels, more lesions or excluded findings
      than the padding holds, a box outside the image, a non-positive diameter.
  """
  prefix = f"case {case}" + (f" ({where})" if where else "")
  image = np.asarray(image, np.float32)
  if image.ndim == 3:
    image = image[..., None]
  instances = np.asarray(instances)
  if image.ndim != 4 or instances.shape != image.shape[:3]:
    raise InputError(f"{prefix}: image {image.shape} and instance map {instances.shape} must be "
                     "3D volumes on the same grid")
  count = len(classes)
  if count > max_boxes:
    raise InputError(f"{prefix}: {count} lesions, more than max_boxes={max_boxes} (raise "
                     "dataset_kwargs.max_boxes)")
  if len(excluded_world) > max_excluded:
    raise InputError(f"{prefix}: {len(excluded_world)} excluded findings, more than "
                     f"max_excluded={max_excluded} (raise dataset_kwargs.max_excluded)")
  present = np.unique(instances)
  present = present[present != 0]
  if present.size and (present.min() < 1 or present.max() > count):
    stray = sorted(int(v) for v in present if not 1 <= v <= count)
    raise InputError(f"{prefix}: instance ids {stray} outside 1..{count}")
  missing = sorted(set(range(1, count + 1)) - {int(v) for v in present})
  if missing:
    raise InputError(f"{prefix}: lesion(s) {missing} have no voxel in the instance map")
  boxes = instance_boxes(instances.astype(np.int32, copy=False), count)
  shape = np.asarray(instances.shape, np.float32)
  outside = [i + 1 for i, b in enumerate(boxes) if np.any(b[:3] < 0) or np.any(b[3:] > shape)]
  if outside:
    raise InputError(f"{prefix}: box(es) of lesion(s) {outside} outside the image {tuple(shape)}")
  if diameters_mm is None:
    diameters_mm = equivalent_diameters(instances, count, spacing)
  diameters_mm = np.asarray(diameters_mm, np.float64).reshape(-1)
  if diameters_mm.size != count or np.any(~np.isfinite(diameters_mm)) or np.any(diameters_mm <= 0):
    raise InputError(f"{prefix}: diameters {diameters_mm.round(3).tolist()} must be "
                     f"{count} positive numbers")
  if centers_world is None:
    centers_world = box_ops.centers_to_world(boxes, affine)
  centers_world = np.asarray(centers_world, np.float64).reshape(-1, 3)
  excluded = np.asarray(excluded_world, np.float64).reshape(-1, 4)

  padded_boxes = np.zeros((max_boxes, 6), np.float32)
  padded_boxes[:count] = boxes
  padded_classes = np.full((max_boxes,), -1, np.int32)
  padded_classes[:count] = np.asarray(classes, np.int32)
  padded_diameters = np.zeros((max_boxes,), np.float32)
  padded_diameters[:count] = diameters_mm
  padded_centers = np.zeros((max_boxes, 3), np.float32)
  padded_centers[:count] = centers_world
  padded_excluded = np.zeros((max_excluded, 4), np.float32)
  padded_excluded[:len(excluded)] = excluded
  return {
      "image": image,
      "instances": instances.astype(np.int16),
      "boxes": padded_boxes,
      "classes": padded_classes,
      "num_boxes": np.int32(count),
      "diameters_mm": padded_diameters,
      "centers_world": padded_centers,
      "excluded_world": padded_excluded,
      "num_excluded": np.int32(len(excluded)),
      "spacing": np.asarray(spacing, np.float32),
      "affine": np.asarray(affine, np.float32),
      "case": case,
  }
