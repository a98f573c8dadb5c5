"""Box regression targets relative to anchors (Faster R-CNN's parametrisation).

For an anchor with centre `c_a` and size `s_a` per axis and a box with `c`, `s`
(Ren et al. 2015; nnDetection's `BoxCoderND`, MIC-DKFZ/nnDetection
`nndet/core/boxes/coder.py`):

  delta_centre = w_c * (c - c_a) / s_a,    delta_size = w_s * log(s / s_a)

Deltas are laid out `(d_c0, .., d_c{n-1}, d_s0, .., d_s{n-1})` in array-axis
order. Decoding clamps the log-size deltas at `log(1000 / 16)` (torchvision's
`BBOX_XFORM_CLIP`) so that `exp` never overflows. Centres here are `(low +
high) / 2`; the half-voxel offset of the voxel-index centre cancels in the
differences. Numpy and JAX arrays alike.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from medjax.detection import boxes as box_ops

DEFAULT_CLIP = math.log(1000.0 / 16)


def _weights(xp, n: int, weights: Optional[Sequence[float]]):
  if weights is None:
    return xp.ones((2 * n,), xp.float32)
  if len(weights) != 2 * n:
    raise ValueError(f"{len(weights)} coder weights: expected {2 * n} (centre then size per axis)")
  return xp.asarray(weights, xp.float32)


def encode_boxes(anchors, boxes, weights: Optional[Sequence[float]] = None):
  """Deltas `(..., 2n)` that turn `anchors (..., 2n)` into `boxes (..., 2n)`."""
  xp = box_ops.array_module(anchors, boxes)
  n = box_ops.spatial_dims(anchors)
  w = _weights(xp, n, weights)
  a_lo, a_hi = box_ops.box_lows_highs(anchors)
  b_lo, b_hi = box_ops.box_lows_highs(boxes)
  a_size, b_size = a_hi - a_lo, b_hi - b_lo
  d_center = (((b_lo + b_hi) - (a_lo + a_hi)) / 2) / a_size
  d_size = xp.log(b_size / a_size)
  return xp.concatenate([d_center, d_size], axis=-1) * w


def decode_boxes(anchors, deltas, weights: Optional[Sequence[float]] = None,
                 clip: float = DEFAULT_CLIP):
  """Boxes `(..., 2n)` from `anchors (..., 2n)` and `deltas (..., 2n)`: `encode_boxes` inverted."""
  xp = box_ops.array_module(anchors, deltas)
  n = box_ops.spatial_dims(anchors)
  deltas = deltas / _weights(xp, n, weights)
  a_lo, a_hi = box_ops.box_lows_highs(anchors)
  a_size = a_hi - a_lo
  center = (a_lo + a_hi) / 2 + deltas[..., :n] * a_size
  size = xp.exp(xp.minimum(deltas[..., n:], clip)) * a_size
  return xp.concatenate([center - size / 2, center + size / 2], axis=-1)
