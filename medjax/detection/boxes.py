"""Boxes: the one canonical layout, its geometry, and conversions to other layouts.

Layout (array-axis order, voxel coordinates unless a name says `world`):
3D `(z1, y1, x1, z2, y2, x2)`, 2D `(y1, x1, y2, x2)`, the first half the low
corner and the second the high corner, one pair per array axis. A box is
half-open: it covers the voxels `z1 <= z < z2`, so an instance whose voxels
span indices `min .. max` has the box `(min, max + 1)` and its centre in
voxel-index coordinates (voxel i's centre is index i) is `(z1 + z2) / 2 - 0.5`.
Its size `z2 - z1` is the number of voxels it covers.

World boxes (`*_world`) are axis-aligned in the image's world frame, in the
world axes' order: `(x1, y1, z1, x2, y2, z2)` in RAS mm for a 3D image, with
`world = affine @ [i, j, k, 1]` where `(i, j, k)` index array axes 0, 1, 2 (as
`medjax.data.io.read_image` returns the affine). A voxel box becomes the
axis-aligned hull of its 8 corners (the voxel faces `z1 - 0.5` and `z2 - 0.5`
in index coordinates) mapped through the affine; with an oblique affine that
hull is larger than the box, and mapping it back grows it again, so only
axis-aligned affines (any permutation, flip, scaling and shift) round-trip.

Every geometric function takes numpy or JAX arrays and returns the same kind:
numpy in, numpy out (host code, data preparation); JAX in, JAX out (jit-able,
for losses and matching). Pairwise functions return `(A, B)` for `(A, 2n)` and
`(B, 2n)` inputs.

Converters:
  nnDetection (Baumgartner et al. 2021) orders a box `(x1, y1, x2, y2, z1, z2)`
  with x, y, z the array axes 0, 1, 2 and derives it from an instance as
  `(min - 1, max + 1)` per axis (`instances_to_boxes` in
  MIC-DKFZ/nnDetection `nndet/io/transforms/instances.py`): the same centre as
  ours and one voxel larger. `to_nndetection` / `from_nndetection` convert both
  the order and that convention.
  MONAI's box modes (`monai.data.box_utils`: `xyzxyz` = StandardMode, `xxyyzz`,
  `xyxyzz`, `xyzwhd`, `cccwhd` and the 2D `xyxy`, `xxyy`, `xywh`, `ccwh`) name
  the image's spatial axes in array order (x = axis 0) and count sizes as
  `max - min` (`TO_REMOVE = 0`), so `xyzxyz` is exactly our layout; its centre
  modes use `(min + max) / 2`, not the voxel-index centre of `box_centers`.
"""
from __future__ import annotations

from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

Array = Union[np.ndarray, jax.Array]


def array_module(*arrays):
  """`jnp` if any argument is a JAX array (or tracer), else `np`."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def spatial_dims(boxes: Array) -> int:
  """2 or 3, from a box array's last dimension (4 or 6)."""
  width = boxes.shape[-1]
  if width not in (4, 6):
    raise ValueError(f"boxes of shape {tuple(boxes.shape)}: expected (..., 4) 2D or (..., 6) 3D "
                     "boxes (low corner then high corner per array axis)")
  return width // 2


def box_lows_highs(boxes: Array):
  """`(low corners (..., n), high corners (..., n))` of `(..., 2n)` boxes."""
  n = spatial_dims(boxes)
  return boxes[..., :n], boxes[..., n:]


def box_sizes(boxes: Array) -> Array:
  """`(..., n)` extents `high - low` per axis, in voxels (or mm for world boxes)."""
  lo, hi = box_lows_highs(boxes)
  return hi - lo


def box_centers(boxes: Array) -> Array:
  """`(..., n)` centres in voxel-index coordinates: `(low + high) / 2 - 0.5`."""
  lo, hi = box_lows_highs(boxes)
  return (lo + hi) / 2 - 0.5


def boxes_from_centers(centers: Array, sizes: Array) -> Array:
  """Inverse of `box_centers` / `box_sizes`: `(..., 2n)` boxes from `(..., n)` centres and sizes."""
  xp = array_module(centers, sizes)
  lo = centers + 0.5 - sizes / 2
  return xp.concatenate([lo, lo + sizes], axis=-1)


def box_volume(boxes: Array) -> Array:
  """`(...)` volume in 3D (area in 2D): the product of the sizes, 0 for an empty box."""
  xp = array_module(boxes)
  sizes = xp.maximum(box_sizes(boxes), 0)
  out = sizes[..., 0]
  for axis in range(1, sizes.shape[-1]):  # a fixed product order, the same in numpy and XLA
    out = out * sizes[..., axis]
  return out


def clip_boxes(boxes: Array, spatial_shape: Sequence[int]) -> Array:
  """Clips boxes to the image `[0, shape)` per axis (a box wholly outside becomes empty)."""
  xp = array_module(boxes)
  lo, hi = box_lows_highs(boxes)
  limit = xp.asarray(spatial_shape, dtype=boxes.dtype)
  lo = xp.clip(lo, 0, limit)
  hi = xp.clip(hi, 0, limit)
  return xp.concatenate([lo, xp.maximum(hi, lo)], axis=-1)


def boxes_inside(boxes: Array, spatial_shape: Sequence[int]) -> Array:
  """`(...)` bool: the box is non-empty and lies within `[0, shape)` on every axis."""
  xp = array_module(boxes)
  lo, hi = box_lows_highs(boxes)
  limit = xp.asarray(spatial_shape, dtype=boxes.dtype)
  return xp.all((lo >= 0) & (hi <= limit) & (hi > lo), axis=-1)


def _joint_volume(a: Array, b: Array, pairwise: bool, enclosing: bool) -> Array:
  """Volume of the intersection (or, with `enclosing`, of the smallest enclosing box)."""
  xp = array_module(a, b)
  a_lo, a_hi = box_lows_highs(a)
  b_lo, b_hi = box_lows_highs(b)
  if pairwise:
    a_lo, a_hi = a_lo[:, None], a_hi[:, None]
  if enclosing:
    extent = xp.maximum(a_hi, b_hi) - xp.minimum(a_lo, b_lo)
  else:
    extent = xp.minimum(a_hi, b_hi) - xp.maximum(a_lo, b_lo)
  extent = xp.maximum(extent, 0)
  out = extent[..., 0]
  for axis in range(1, extent.shape[-1]):  # a fixed product order, the same in numpy and XLA
    out = out * extent[..., axis]
  return out


def _iou_union(a: Array, b: Array, pairwise: bool):
  xp = array_module(a, b)
  inter = _joint_volume(a, b, pairwise, enclosing=False)
  va, vb = box_volume(a), box_volume(b)
  union = (va[:, None] + vb) - inter if pairwise else (va + vb) - inter
  safe = xp.where(union > 0, union, 1)
  return xp.where(union > 0, inter / safe, 0), union


def box_iou(a: Array, b: Array) -> Array:
  """Pairwise intersection over union `(A, B)` of boxes `(A, 2n)` and `(B, 2n)`.

  `inter / (vol_a + vol_b - inter)`; 0 where the union is empty.
  """
  return _iou_union(a, b, pairwise=True)[0]


def aligned_box_iou(a: Array, b: Array) -> Array:
  """IoU of row i of `a` with row i of `b`: `(N,)` for `(N, 2n)` inputs."""
  return _iou_union(a, b, pairwise=False)[0]


def _giou(a: Array, b: Array, pairwise: bool) -> Array:
  xp = array_module(a, b)
  iou, union = _iou_union(a, b, pairwise)
  enclosing = _joint_volume(a, b, pairwise, enclosing=True)
  safe = xp.where(enclosing > 0, enclosing, 1)
  return iou - xp.where(enclosing > 0, (enclosing - union) / safe, 0)


def box_giou(a: Array, b: Array) -> Array:
  """Pairwise generalized IoU `(A, B)` (Rezatofighi et al. 2019).

  `IoU - (C - U) / C` with C the volume of the smallest box enclosing both and U
  their union; in `[-1, 1]`, -> -1 for small boxes far apart.
  """
  return _giou(a, b, pairwise=True)


def aligned_box_giou(a: Array, b: Array) -> Array:
  """Generalized IoU of row i of `a` with row i of `b`: `(N,)`."""
  return _giou(a, b, pairwise=False)


def box_center_distance(a: Array, b: Array) -> Array:
  """Pairwise Euclidean distance `(A, B)` between box centres (voxels)."""
  xp = array_module(a, b)
  d = box_centers(a)[:, None] - box_centers(b)[None]
  return xp.sqrt(xp.sum(d * d, axis=-1))


# ----------------------------------------------------------------------------- instances


def boxes_from_instances(instance_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One box per instance id present in an integer map (0 = background).

  Args:
    instance_map: `(D, H, W)` or `(H, W)` integer array.
  Returns:
    `(boxes (M, 2n) float32, ids (M,) int64)` in increasing id order, the box of
    id i covering exactly the voxels where the map equals i (half-open extents).
  """
  instance_map = np.asarray(instance_map)
  if not np.issubdtype(instance_map.dtype, np.integer):
    raise ValueError(f"instance map of dtype {instance_map.dtype}: expected integers")
  n = instance_map.ndim
  if instance_map.size == 0 or instance_map.max() <= 0:
    return np.zeros((0, 2 * n), np.float32), np.zeros((0,), np.int64)
  slices = ndimage.find_objects(np.maximum(instance_map, 0).astype(np.int64))
  ids = [i + 1 for i, s in enumerate(slices) if s is not None]
  boxes = [[s.start for s in slices[i - 1]] + [s.stop for s in slices[i - 1]] for i in ids]
  return np.asarray(boxes, np.float32).reshape(-1, 2 * n), np.asarray(ids, np.int64)


# ----------------------------------------------------------------------------- world coordinates


def _check_affine(affine: Array, n: int) -> np.ndarray:
  affine = np.asarray(affine, np.float64)
  if affine.shape != (n + 1, n + 1):
    raise ValueError(f"affine of shape {affine.shape}: expected ({n + 1}, {n + 1}) for "
                     f"{n}D coordinates")
  return affine


def voxel_to_world(points: Array, affine: Array) -> np.ndarray:
  """`(..., n)` voxel-index coordinates -> world coordinates: `affine @ [p, 1]`."""
  points = np.asarray(points, np.float64)
  affine = _check_affine(affine, points.shape[-1])
  return points @ affine[:-1, :-1].T + affine[:-1, -1]


def world_to_voxel(points: Array, affine: Array) -> np.ndarray:
  """`(..., n)` world coordinates -> (fractional) voxel-index coordinates."""
  points = np.asarray(points, np.float64)
  affine = _check_affine(affine, points.shape[-1])
  inverse = np.linalg.inv(affine)
  return points @ inverse[:-1, :-1].T + inverse[:-1, -1]


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """`(..., 2^n, n)` corners of the boxes spanned by `lo`, `hi` `(..., n)`."""
  n = lo.shape[-1]
  choice = (np.arange(2 ** n)[:, None] >> np.arange(n)[None]) & 1  # (2^n, n) of 0/1
  return np.where(choice.astype(bool), hi[..., None, :], lo[..., None, :])


def boxes_to_world(boxes: Array, affine: Array) -> np.ndarray:
  """Voxel boxes `(..., 2n)` -> world boxes `(..., 2n)` (world axis order, mm).

  The axis-aligned hull of the 2^n corners of the covered voxels' extent (index
  faces `low - 0.5` and `high - 0.5`) mapped through the affine.
  """
  lo, hi = box_lows_highs(np.asarray(boxes, np.float64))
  world = voxel_to_world(_corners(lo - 0.5, hi - 0.5), affine)
  return np.concatenate([world.min(axis=-2), world.max(axis=-2)], axis=-1)


def world_boxes_to_voxel(boxes_world: Array, affine: Array) -> np.ndarray:
  """World boxes `(..., 2n)` -> voxel boxes `(..., 2n)` (half-open, fractional).

  The axis-aligned hull (in index space) of the world box's corners mapped
  through the inverse affine; exact inverse of `boxes_to_world` for axis-aligned
  affines, a larger box for oblique ones.
  """
  lo, hi = box_lows_highs(np.asarray(boxes_world, np.float64))
  index = world_to_voxel(_corners(lo, hi), affine)
  return np.concatenate([index.min(axis=-2) + 0.5, index.max(axis=-2) + 0.5], axis=-1)


def centers_to_world(boxes: Array, affine: Array) -> np.ndarray:
  """World coordinates `(..., n)` of the voxel-index centres of boxes `(..., 2n)`."""
  return voxel_to_world(box_centers(np.asarray(boxes, np.float64)), affine)


# ----------------------------------------------------------------------------- nnDetection


def to_nndetection(boxes: Array, *, instance_margin: bool = True) -> Array:
  """Our layout -> nnDetection's `(x1, y1, x2, y2[, z1, z2])` (x, y, z = array axes 0, 1, 2).

  With `instance_margin` the low corner moves down by one voxel, nnDetection's
  `(min - 1, max + 1)` box of an instance (ours is `(min, max + 1)`): the same
  centre, one voxel larger. Without it only the order changes.
  """
  xp = array_module(boxes)
  lo, hi = box_lows_highs(boxes)
  if instance_margin:
    lo = lo - 1
  columns = [lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1]]
  if lo.shape[-1] == 3:
    columns += [lo[..., 2], hi[..., 2]]
  return xp.stack(columns, axis=-1)


def from_nndetection(boxes: Array, *, instance_margin: bool = True) -> Array:
  """nnDetection's `(x1, y1, x2, y2[, z1, z2])` -> our layout (inverse of `to_nndetection`)."""
  xp = array_module(boxes)
  n = spatial_dims(boxes)
  lo = [boxes[..., 0], boxes[..., 1]]
  hi = [boxes[..., 2], boxes[..., 3]]
  if n == 3:
    lo.append(boxes[..., 4])
    hi.append(boxes[..., 5])
  lo = xp.stack(lo, axis=-1)
  if instance_margin:
    lo = lo + 1
  return xp.concatenate([lo, xp.stack(hi, axis=-1)], axis=-1)


# ----------------------------------------------------------------------------- MONAI

MONAI_MODES = {
    2: ("xyxy", "xxyy", "xywh", "ccwh"),
    3: ("xyzxyz", "xxyyzz", "xyxyzz", "xyzwhd", "cccwhd"),
}


def _check_mode(mode: str, n: int) -> None:
  if mode not in MONAI_MODES[n]:
    raise ValueError(f"MONAI box mode {mode!r} for {n}D boxes: expected one of "
                     f"{', '.join(MONAI_MODES[n])}")


def to_monai(boxes: Array, mode: str = "xyzxyz") -> Array:
  """Our layout -> a MONAI box mode (`monai.data.box_utils`, x = array axis 0)."""
  xp = array_module(boxes)
  n = spatial_dims(boxes)
  mode = {"xyzxyz": "xyxy"}.get(mode, mode) if n == 2 else mode
  _check_mode(mode, n)
  lo, hi = box_lows_highs(boxes)
  if mode in ("xyxy", "xyzxyz"):
    return xp.concatenate([lo, hi], axis=-1)
  if mode in ("xxyy", "xxyyzz"):
    return xp.stack([v for axis in range(n) for v in (lo[..., axis], hi[..., axis])], axis=-1)
  if mode == "xyxyzz":
    return xp.stack([lo[..., 0], lo[..., 1], hi[..., 0], hi[..., 1], lo[..., 2], hi[..., 2]],
                    axis=-1)
  if mode in ("xywh", "xyzwhd"):
    return xp.concatenate([lo, hi - lo], axis=-1)
  return xp.concatenate([(lo + hi) / 2, hi - lo], axis=-1)  # ccwh / cccwhd


def from_monai(boxes: Array, mode: str = "xyzxyz") -> Array:
  """A MONAI box mode -> our layout (inverse of `to_monai`)."""
  xp = array_module(boxes)
  n = spatial_dims(boxes)
  mode = {"xyzxyz": "xyxy"}.get(mode, mode) if n == 2 else mode
  _check_mode(mode, n)
  if mode in ("xyxy", "xyzxyz"):
    return boxes
  if mode in ("xxyy", "xxyyzz"):
    lo = xp.stack([boxes[..., 2 * axis] for axis in range(n)], axis=-1)
    hi = xp.stack([boxes[..., 2 * axis + 1] for axis in range(n)], axis=-1)
    return xp.concatenate([lo, hi], axis=-1)
  if mode == "xyxyzz":
    return xp.stack([boxes[..., 0], boxes[..., 1], boxes[..., 4], boxes[..., 2], boxes[..., 3],
                     boxes[..., 5]], axis=-1)
  first, sizes = boxes[..., :n], boxes[..., n:]
  if mode in ("xywh", "xyzwhd"):
    return xp.concatenate([first, first + sizes], axis=-1)
  return xp.concatenate([first - sizes / 2, first + sizes / 2], axis=-1)  # ccwh / cccwhd
