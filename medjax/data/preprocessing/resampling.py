"""Resampling a volume to a new voxel spacing, as nnU-Net does (Isensee et al., Nature Methods 2021).

Images are interpolated with cubic B-splines (order 3), labels per class:
each class's one-hot mask is interpolated linearly (order 1) and every voxel
takes the class of largest value (ties to the lower class), or nearest
neighbour (order 0). When the voxels are anisotropic (largest / smallest
spacing > 3, of the input or of the target) the low-resolution axis is
resampled separately with order 0, as nnU-Net's `separate_z`, so that thick
slices are not blended.

Grid convention (`grid`): by default voxel centres are aligned (the first and
last voxel cover the same extent before and after), i.e. output voxel `j` of
`n_out` samples the input at `x = (j + 0.5) * n_in / n_out - 0.5`, as
`skimage.transform.resize` (which nnU-Net uses) and `scipy.ndimage.zoom(...,
grid_mode=True)`. Two other grids give PyTorch's `interpolate` (the MLPerf
3D U-Net preprocessing resamples with it): "corners", `x = j (n_in - 1) /
(n_out - 1)` (`align_corners=True`, e.g. trilinear), and "asymmetric", `x = j
n_in / n_out` with nearest taking `floor(x)` in float32 arithmetic (`mode=
"nearest"`). Cubic interpolation uses mirror boundaries
(`scipy.ndimage.map_coordinates(..., order=3, mode="mirror")` gives the same
numbers), linear and nearest clamp to the edge.

Memory: every grid-to-grid interpolation here is a tensor product of 1D
interpolations, so it runs axis by axis on slabs of the output along axis 0
(`SLAB_VOXELS` at a time), in float32. The cubic spline prefilter
(`scipy.ndimage.spline_filter1d`) runs in place on a float32 array the caller
lends (`overwrite_input=True`) or on one copy. No full float64 copy is made
and no coordinate arrays of the output's size.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from medjax.errors import InputError

ANISOTROPY_THRESHOLD = 3.0
GRIDS = ("centers", "corners", "asymmetric")
SLAB_VOXELS = 1 << 20  # voxels of one slab's widest intermediate (4 MiB in float32)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                    target_spacing: Sequence[float]) -> tuple[int, ...]:
  """`round(shape * spacing / target_spacing)` per axis, at least 1 (nnU-Net's new shape)."""
  if len(shape) != len(spacing) or len(spacing) != len(target_spacing):
    raise InputError(f"resampling: shape {tuple(shape)}, spacing {tuple(spacing)} and target "
                     f"spacing {tuple(target_spacing)} need one entry per axis")
  return tuple(max(int(round(n * s / t)), 1) for n, s, t in zip(shape, spacing, target_spacing))


def _lowres_axis(spacing: Sequence[float], threshold: float) -> Optional[int]:
  spacing = np.asarray(spacing, np.float64)
  if spacing.max() / spacing.min() <= threshold:
    return None
  axes = np.flatnonzero(spacing == spacing.max())
  return int(axes[0]) if axes.size == 1 else None


def separate_axis(spacing: Sequence[float], target_spacing: Sequence[float],
                  threshold: float = ANISOTROPY_THRESHOLD) -> Optional[int]:
  """The axis nnU-Net resamples separately (order 0), or None.

  As `nnunetv2.preprocessing.resampling.default_resampling`: the axis of
  largest spacing of the input when its largest / smallest spacing exceeds
  `threshold`, else that of the target spacing, else None; None too when the
  largest spacing is shared by several axes.
  """
  axis = _lowres_axis(spacing, threshold)
  return axis if axis is not None else _lowres_axis(target_spacing, threshold)


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
  if n == 1:
    return np.zeros_like(index)
  period = 2 * (n - 1)
  index = np.abs(index) % period
  return np.where(index >= n, period - index, index)


def sample_positions(n_in: int, n_out: int, grid: str = "centers") -> np.ndarray:
  """Where output sample `j` reads the input, in input voxel indices (module docstring).

  "corners" and "asymmetric" are computed in float32, as PyTorch's `interpolate` does.
  """
  j = np.arange(n_out, dtype=np.float64)
  if grid == "centers":
    return (j + 0.5) * (n_in / n_out) - 0.5
  if grid == "corners":
    scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)
    return (scale * j.astype(np.float32)).astype(np.float64)
  if grid == "asymmetric":
    return (np.float32(n_in / n_out) * j.astype(np.float32)).astype(np.float64)
  raise ValueError(f"grid={grid!r}: expected one of {', '.join(GRIDS)}")


def interpolation_taps(n_in: int, n_out: int, order: int,
                       grid: str = "centers") -> tuple[np.ndarray, np.ndarray]:
  """Input indices and weights of 1D interpolation from `n_in` to `n_out` samples.

  Returns `(index (n_out, taps) int64, weight (n_out, taps) float32)`:
  output `j` = `sum_t weight[j, t] * input[index[j, t]]` (order 3 on the
  spline coefficients, i.e. after `spline_filter1d(..., mode="mirror")`).
  Orders: 0 (nearest, 1 tap: the closest input voxel, or `floor(x)` on the
  "asymmetric" grid), 1 (linear, 2 taps, edge clamped), 3 (cubic B-spline, 4
  taps, mirror boundary). `grid`: where the samples lie (`sample_positions`).
  """
  x = sample_positions(n_in, n_out, grid)
  if order == 0:
    nearest = np.floor(x) if grid == "asymmetric" else np.floor(x + 0.5)
    index = np.clip(nearest, 0, n_in - 1).astype(np.int64)[:, None]
    return index, np.ones_like(index, np.float32)
  if order == 1:
    x = np.clip(x, 0.0, n_in - 1)
    lo = np.minimum(np.floor(x), max(n_in - 2, 0)).astype(np.int64)
    t = x - lo
    index = np.stack([lo, np.minimum(lo + 1, n_in - 1)], axis=1)
    return index, np.stack([1.0 - t, t], axis=1).astype(np.float32)
  if order == 3:
    lo = np.floor(x).astype(np.int64)
    t = x - lo
    weight = np.stack([(1 - t) ** 3, 3 * t ** 3 - 6 * t ** 2 + 4,
                       -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1, t ** 3], axis=1) / 6.0
    index = _reflect(lo[:, None] + np.arange(-1, 3), n_in)
    return index, weight.astype(np.float32)
  raise ValueError(f"interpolation order must be 0, 1 or 3, got {order}")


def _apply_axis(x: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
  """`x` interpolated along `axis` with taps `(index, weight)`; float32."""
  shape = [1] * x.ndim
  shape[axis] = -1
  out = None
  for t in range(index.shape[1]):
    term = np.take(x, index[:, t], axis=axis)
    if weight[:, t].min() != 1.0 or weight[:, t].max() != 1.0:
      term = term.astype(np.float32, copy=False)
      term *= weight[:, t].reshape(shape)
    if out is None:
      out = term.astype(np.float32, copy=False)
    else:
      out += term
  return out


def _slabs(shape: Sequence[int], new_shape: Sequence[int], orders: Sequence[int],
           grid: str = "centers"):
  """Output slabs along axis 0: yields `(rows, inputs, interpolate)` where
  `out[rows]` = `interpolate(values[inputs])` for any `values` of `shape`
  (`interpolate` runs the 1D interpolations of every axis on the slab)."""
  taps = [interpolation_taps(n_in, n_out, o, grid)
          for n_in, n_out, o in zip(shape, new_shape, orders)]
  widest = max(int(np.prod(shape[1:])), int(np.prod(new_shape[1:])), 1)
  step = max(1, SLAB_VOXELS // widest)
  for start in range(0, new_shape[0], step):
    rows = slice(start, min(start + step, new_shape[0]))
    index0, weight0 = taps[0][0][rows], taps[0][1][rows]
    lo, hi = int(index0.min()), int(index0.max()) + 1

    def interpolate(block, index0=index0 - lo, weight0=weight0):
      block = _apply_axis(block, index0, weight0, 0)
      for axis in range(1, len(shape)):
        block = _apply_axis(block, *taps[axis], axis)
      return block

    yield rows, slice(lo, hi), interpolate


def _interpolate(values: np.ndarray, new_shape: Sequence[int], orders: Sequence[int],
                 out: np.ndarray, grid: str = "centers") -> np.ndarray:
  """Writes the tensor-product interpolation of `values` `(*S)` (already
  prefiltered along its cubic axes) into `out` `(*new_shape)`, slab by slab."""
  for rows, inputs, interpolate in _slabs(values.shape, new_shape, orders, grid):
    out[rows] = interpolate(values[inputs])
  return out


def axis_orders(shape: Sequence[int], new_shape: Sequence[int], order: int,
                separate: Optional[int]) -> tuple[int, ...]:
  """`order` on every axis but `separate` and those whose size does not change,
  which get 0 (a copy: the output samples fall on the input voxels)."""
  return tuple(0 if axis == separate or n == m else order
               for axis, (n, m) in enumerate(zip(shape, new_shape)))


def resample_image(image: np.ndarray, new_shape: Sequence[int], *, order: int = 3,
                   separate: Optional[int] = None, out: Optional[np.ndarray] = None,
                   overwrite_input: bool = False, grid: str = "centers") -> np.ndarray:
  """One channel `(*S)` resampled to `(*new_shape)` float32 (cubic; `separate` axis nearest).

  Args:
    image: one channel, any real dtype.
    new_shape: output shape, one entry per axis.
    order: 3 (cubic B-spline, nnU-Net's images), 1 or 0.
    separate: the axis interpolated with order 0 (see `separate_axis`), or None.
    out: optional float32 array of `new_shape` (e.g. a channel view of a
      `(*S', C)` array) written in place.
    overwrite_input: `image` is float32 and may be used as scratch (the
      spline prefilter runs in place on it): saves one copy.
    grid: "centers" (default), "corners" or "asymmetric" (module docstring).
  """
  new_shape = tuple(int(n) for n in new_shape)
  if len(new_shape) != image.ndim:
    raise InputError(f"resample_image: new shape {new_shape} for a {image.ndim}D image")
  if out is None:
    out = np.empty(new_shape, np.float32)
  if new_shape == image.shape:
    out[...] = image
    return out
  orders = axis_orders(image.shape, new_shape, order, separate)
  if 3 in orders:
    if not (overwrite_input and image.dtype == np.float32 and image.flags.writeable):
      image = np.array(image, dtype=np.float32)
    for axis, o in enumerate(orders):
      if o == 3 and image.shape[axis] > 1:
        ndimage.spline_filter1d(image, 3, axis=axis, output=image, mode="mirror")
  return _interpolate(image, new_shape, orders, out, grid)


def resample_labels(label: np.ndarray, new_shape: Sequence[int], *, order: int = 1,
                    separate: Optional[int] = None,
                    classes: Optional[Sequence[int]] = None,
                    grid: str = "centers") -> np.ndarray:
  """Integer labels `(*S)` resampled to `(*new_shape)`, same dtype.

  `order=1`: per-class linear (nnU-Net's `resize_segmentation`): each class's
  one-hot mask interpolated linearly, the voxel takes the class of largest
  value (ties to the lower class), so only classes present in the input
  appear. `order=0`: nearest neighbour. The `separate` axis is always nearest.
  `classes` (default: 0 to the largest value; labels are >= 0) limits the
  classes considered. `grid` as in `resample_image` ("asymmetric" with
  order 0 is PyTorch's `interpolate(mode="nearest")`).
  """
  label = np.asarray(label)
  new_shape = tuple(int(n) for n in new_shape)
  if len(new_shape) != label.ndim:
    raise InputError(f"resample_labels: new shape {new_shape} for {label.ndim}D labels")
  if new_shape == label.shape:
    return label.copy()
  orders = axis_orders(label.shape, new_shape, order, separate)
  if all(o == 0 for o in orders):
    index = [interpolation_taps(n_in, n_out, 0, grid)[0][:, 0]
             for n_in, n_out in zip(label.shape, new_shape)]
    return label[np.ix_(*index)]
  if order != 1:
    raise ValueError(f"label interpolation order must be 0 or 1, got {order}")
  if classes is None:  # every value up to the largest; absent ones are skipped per slab
    classes = range(int(label.max()) + 1) if label.size else ()
  out = np.zeros(new_shape, label.dtype)
  for rows, inputs, interpolate in _slabs(label.shape, new_shape, orders, grid):
    block = label[inputs]
    present = set((np.flatnonzero(np.bincount(block.ravel())) if block.dtype.kind in "ub"
                   else np.unique(block)).tolist())
    best = np.full(out[rows].shape, -1.0, np.float32)
    winner = out[rows]
    for c in classes:
      if c not in present:  # its mask is 0 here: it never wins
        continue
      value = interpolate((block == c).astype(np.float32))
      better = value > best
      best[better] = value[better]
      winner[better] = c
  return out


def resample_probabilities(probabilities: np.ndarray, new_shape: Sequence[int], *,
                           separate: Optional[int] = None,
                           out: Optional[np.ndarray] = None) -> np.ndarray:
  """Class probabilities `(*S, K)` resampled linearly to `(*new_shape, K)` float32,
  renormalised to sum to 1 per voxel (`separate` axis nearest), as nnU-Net
  exports probabilities. `out` may be a `(*new_shape, K)` float32 view."""
  probabilities = np.asarray(probabilities)
  new_shape = tuple(int(n) for n in new_shape)
  k = probabilities.shape[-1]
  if out is None:
    out = np.empty(new_shape + (k,), np.float32)
  for c in range(k):
    resample_image(probabilities[..., c], new_shape, order=1, separate=separate, out=out[..., c])
  np.clip(out, 0.0, None, out=out)
  total = out.sum(axis=-1, keepdims=True)
  np.maximum(total, 1e-8, out=total)
  out /= total
  return out
