"""Anchor boxes per pyramid level, and anchor sizes planned from the training boxes.

An anchor level is a feature map of shape `S_l` at stride `s_l` (voxels per
feature-map cell, per axis) with the same set of anchor shapes at every cell:
every combination of one size per axis (`width x height x depth`, nnDetection's
size parametrisation, Baumgartner et al. 2021, `AnchorGenerator3DS` in
MIC-DKFZ/nnDetection `nndet/core/boxes/anchors.py`). Cell `c` covers the voxels
`c * s .. (c + 1) * s - 1`; its anchors are centred on that cell, i.e. the
half-open box `c * s + s / 2 -+ size / 2` per axis.

Order (what the detection heads' outputs follow): levels in the given order,
then cells in C order over the feature map, then the anchor shapes of a cell in
`itertools.product(sizes_axis0, sizes_axis1, ...)` order (the last axis
fastest). Everything is a fixed-shape numpy array computed once per input shape.

`plan_anchors` chooses the sizes as nnDetection does (`BoxC001._plan_anchors` /
`find_anchors` in `nndet/planning/architecture/boxes/base.py`): one set of base
sizes per axis, scaled by each level's stride relative to the first level, that
maximises the mean over the training boxes of the best IoU between the box and
any anchor, both centred at the origin (position-free), after dropping the
boxes outside the 0.5-99.5 percentile of size on any axis. nnDetection searches
with nevergrad's TwoPointsDE (5,000 evaluations); here a deterministic
coordinate search over candidate sizes does the same job without the dependency.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Sequence

import jax
import numpy as np

from medjax.detection import boxes as box_ops


def cell_anchor_sizes(sizes_per_axis: Sequence[Sequence[float]]) -> np.ndarray:
  """`(A, n)` anchor shapes: every combination of one size per axis (last axis fastest)."""
  return np.asarray(list(itertools.product(*sizes_per_axis)), np.float32).reshape(
      -1, len(sizes_per_axis))


def grid_anchors(feature_shape: Sequence[int], stride: Sequence[float],
                 sizes_per_axis: Sequence[Sequence[float]]) -> np.ndarray:
  """Anchors of one level: `(prod(feature_shape) * A, 2n)` boxes in voxel coordinates.

  Args:
    feature_shape: the feature map's spatial shape `S_l`.
    stride: voxels per cell per axis (an int applies to every axis).
    sizes_per_axis: per axis, the anchor sizes (voxels); `A = prod(len(...))`.
  """
  n = len(feature_shape)
  stride = np.broadcast_to(np.asarray(stride, np.float32), (n,))
  if len(sizes_per_axis) != n:
    raise ValueError(f"{len(sizes_per_axis)} axes of anchor sizes for a {n}D feature map")
  shapes = cell_anchor_sizes(sizes_per_axis)  # (A, n)
  grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in feature_shape], indexing="ij")
  centers = np.stack([g.reshape(-1) for g in grids], -1) * stride + stride / 2  # (P, n)
  lo = centers[:, None, :] - shapes[None] / 2
  hi = centers[:, None, :] + shapes[None] / 2
  return np.concatenate([lo, hi], -1).reshape(-1, 2 * n).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AnchorSet:
  """The anchors of every level, concatenated, and how they split.

  A JAX pytree (`boxes` is its leaf, the counts static): pass it as an argument
  of a jitted step instead of closing over it, so that a large anchor array is
  not embedded in the compiled program as a constant.

  Attributes:
    boxes: `(A_total, 2n)` float32 anchors in voxel coordinates.
    per_level: anchors per level (`prod(S_l) * per_location[l]`).
    per_location: anchor shapes per cell on each level.
  """
  boxes: np.ndarray
  per_level: tuple[int, ...]
  per_location: tuple[int, ...]


jax.tree_util.register_dataclass(AnchorSet, data_fields=["boxes"],
                                 meta_fields=["per_level", "per_location"])


def multilevel_anchors(spatial_shape: Sequence[int], strides: Sequence[Sequence[int]],
                       sizes: Sequence[Sequence[Sequence[float]]]) -> AnchorSet:
  """Anchors for an input of `spatial_shape` over levels of the given strides and sizes.

  Args:
    spatial_shape: the network input's spatial shape; level l's feature map is
      `spatial_shape // strides[l]` (the input must divide evenly).
    strides: per level, voxels per cell per axis.
    sizes: per level, per axis, the anchor sizes in voxels.
  """
  if len(strides) != len(sizes):
    raise ValueError(f"{len(strides)} levels of strides but {len(sizes)} of anchor sizes")
  all_boxes, per_level, per_location = [], [], []
  for stride, level_sizes in zip(strides, sizes):
    stride = np.broadcast_to(np.asarray(stride, np.int64), (len(spatial_shape),))
    if any(s % t for s, t in zip(spatial_shape, stride)):
      raise ValueError(f"input shape {tuple(spatial_shape)} is not divisible by the level "
                       f"stride {tuple(int(t) for t in stride)}")
    feature_shape = [s // t for s, t in zip(spatial_shape, stride)]
    level = grid_anchors(feature_shape, stride, level_sizes)
    all_boxes.append(level)
    per_level.append(level.shape[0])
    per_location.append(int(np.prod([len(s) for s in level_sizes])))
  return AnchorSet(np.concatenate(all_boxes, 0), tuple(per_level), tuple(per_location))


def scale_sizes(base_sizes: Sequence[Sequence[float]],
                strides: Sequence[Sequence[int]]) -> tuple:
  """Per-level sizes: the base sizes (per axis) times each level's stride over the first's."""
  first = np.asarray(strides[0], np.float64)
  out = []
  for stride in strides:
    factor = np.broadcast_to(np.asarray(stride, np.float64) / first, (len(base_sizes),))
    out.append(tuple(tuple(float(s * factor[axis]) for s in axis_sizes)
                     for axis, axis_sizes in enumerate(base_sizes)))
  return tuple(out)


# ----------------------------------------------------------------------------- planning


def centered_iou(box_sizes: np.ndarray, anchor_sizes: np.ndarray) -> np.ndarray:
  """`(B, A)` IoU of boxes and anchors of the given sizes, all centred at the origin."""
  inter = np.prod(np.minimum(box_sizes[:, None], anchor_sizes[None]), axis=-1)
  union = np.prod(box_sizes, -1)[:, None] + np.prod(anchor_sizes, -1)[None] - inter
  return inter / np.maximum(union, 1e-12)


def mean_best_iou(box_sizes: np.ndarray, sizes: Sequence[Sequence[Sequence[float]]]) -> float:
  """Mean over boxes of the best centred IoU with any anchor shape of any level."""
  shapes = np.concatenate([cell_anchor_sizes(level) for level in sizes], 0).astype(np.float64)
  return float(centered_iou(np.asarray(box_sizes, np.float64), shapes).max(axis=1).mean())


def filter_box_sizes(box_sizes: np.ndarray, lower_percentile: float = 0.5,
                     upper_percentile: float = 99.5) -> np.ndarray:
  """Drops boxes whose size on some axis is outside the percentile range (nnDetection's
  `filter_boxes`); keeps them all when fewer than 10 boxes would remain."""
  mask = np.ones(len(box_sizes), bool)
  for axis in range(box_sizes.shape[1]):
    low = np.percentile(box_sizes[:, axis], lower_percentile)
    high = np.percentile(box_sizes[:, axis], upper_percentile)
    mask &= (box_sizes[:, axis] >= low) & (box_sizes[:, axis] <= high)
  return box_sizes[mask] if mask.sum() >= 10 else box_sizes


@dataclasses.dataclass(frozen=True)
class AnchorPlan:
  """Planned anchor sizes.

  Attributes:
    base_sizes: per axis, the sizes at the first level (voxels).
    sizes: per level, per axis, the sizes (`base_sizes` times the level's relative stride).
    mean_best_iou: the objective reached on the (filtered) training boxes.
  """
  base_sizes: tuple
  sizes: tuple
  mean_best_iou: float


def plan_anchors(training_boxes: np.ndarray, strides: Sequence[Sequence[int]], *,
                 sizes_per_axis: int = 2, initial: Optional[Sequence[Sequence[float]]] = None,
                 rounds: int = 4) -> AnchorPlan:
  """Anchor sizes that maximise the mean best IoU with the training boxes.

  Base sizes (per axis, `sizes_per_axis` of them) are scaled per level by the
  level stride over the first level's; the objective is `mean_best_iou` on the
  training boxes' sizes after `filter_box_sizes`. The search starts from
  quantiles of the box sizes per axis (divided among the levels) or `initial`,
  then improves one size at a time over a log-spaced grid of candidates (plus
  the neighbouring integers), `rounds` times over all sizes, keeping a change
  only when it raises the objective. Deterministic.

  Args:
    training_boxes: `(B, 2n)` voxel boxes (at the resolution the network sees).
    strides: per level, the stride (an int or one per axis).
  """
  training_boxes = np.asarray(training_boxes, np.float64)
  if training_boxes.ndim != 2 or training_boxes.shape[0] == 0:
    raise ValueError(f"training boxes of shape {training_boxes.shape}: expected (B, 2n), B > 0")
  sizes = filter_box_sizes(box_ops.box_sizes(training_boxes))
  n = sizes.shape[1]
  strides = [tuple(np.broadcast_to(np.asarray(s, np.float64), (n,))) for s in strides]
  relative = np.asarray(strides) / np.asarray(strides[0])  # (L, n)
  if initial is None:
    # spread the quantiles of the box sizes over levels x sizes, expressed at level 0
    count = len(strides) * sizes_per_axis
    quantiles = (np.arange(count) + 0.5) / count
    base = []
    for axis in range(n):
      q = np.quantile(sizes[:, axis], quantiles).reshape(len(strides), sizes_per_axis)
      base.append(np.median(q / relative[:, axis:axis + 1], axis=0))
    base = np.maximum(np.asarray(base), 1.0)
  else:
    base = np.asarray(initial, np.float64)
  objective = lambda b: mean_best_iou(sizes, scale_sizes(b, strides))
  best = objective(base)
  high = max(2.0, float(sizes.max()))
  grid = np.unique(np.round(np.geomspace(1.0, high, 48), 2))
  for _ in range(rounds):
    improved = False
    for axis in range(n):
      for k in range(base.shape[1]):
        current = base[axis, k]
        candidates = np.unique(np.concatenate([grid, [max(1.0, current - 1), current + 1]]))
        for value in candidates:
          trial = base.copy()
          trial[axis, k] = value
          score = objective(trial)
          if score > best + 1e-9:
            best, base, improved = score, trial, True
    if not improved:
      break
  base = np.sort(base, axis=1)
  return AnchorPlan(tuple(tuple(float(v) for v in axis) for axis in base),
                    scale_sizes(base, strides), best)
