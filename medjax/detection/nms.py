"""Greedy non-maximum suppression: a jit-compiled, fixed-shape version and a NumPy reference.

Greedy NMS (as in Faster R-CNN, Ren et al. 2015, and every detector since):
visit the boxes by decreasing score (equal scores by increasing index); keep a
box unless a box kept before it overlaps it with IoU > `iou_threshold`. With
`classes`, only boxes of the same class suppress each other (batched NMS).

`nms` computes exactly that set (the same IoU arithmetic in float32 as
`nms_numpy`, so both keep the same boxes, ties included) with fixed shapes:

1. sort once (invalid boxes last, then score descending, then index);
2. walk the sorted boxes in tiles of `tile_size` (a `lax.while_loop` that stops
   early once `max_output` boxes are kept or only invalid boxes remain);
3. a tile's boxes are first tested against the boxes kept so far, stored
   compactly in a buffer of capacity `max_output` and read in tile-sized chunks
   (only `ceil(kept / tile)` chunks: the cost grows with boxes x kept, not boxes^2);
4. inside the tile, greedy order is resolved on the tile's IoU matrix by
   iterating `keep_i = candidate_i and no kept j < i overlaps i` to its fixed
   point (exact: the system is triangular, so its fixed point is unique; it is
   reached in at most the length of the longest suppression chain + 1 steps);
5. the tile's kept boxes are appended to the buffer.

This is the tiled scheme of TensorFlow's `non_max_suppression_padded` with the
kept set compacted, so that it is fast on CPU as on accelerators (no
data-dependent shapes, one compiled program per input shape). MONAI's
`non_max_suppression` and nnDetection's CPU fallback are Python loops.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from medjax.detection import boxes as box_ops


def _overlapping(a, b, threshold, class_a=None, class_b=None):
  """`(A, B)` bool: IoU > threshold (and the same class, when classes are given)."""
  over = box_ops.box_iou(a, b) > threshold
  if class_a is not None:
    over = over & (class_a[:, None] == class_b[None, :])
  return over


@functools.partial(jax.jit, static_argnames=("max_output", "tile_size"))
def nms(boxes: jax.Array, scores: jax.Array, *, iou_threshold, max_output: Optional[int] = None,
        classes: Optional[jax.Array] = None, valid: Optional[jax.Array] = None,
        tile_size: int = 256) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS, jit-compiled, fixed shapes in and out.

  Args:
    boxes: `(B, 2n)` boxes (3D `(z1, y1, x1, z2, y2, x2)` or 2D).
    scores: `(B,)` finite scores (higher is kept first).
    iou_threshold: suppress a box whose IoU with a kept box is greater than this.
    max_output: length of the output (static; default B): at most this many
      boxes are kept, the first ones in greedy order.
    classes: optional `(B,)` ints: NMS within each class only.
    valid: optional `(B,)` bool: boxes to consider (padding excluded).
    tile_size: boxes per tile (static).
  Returns:
    `(indices (max_output,) int32, count int32)`: the kept boxes' indices into
    `boxes` in greedy order, padded with -1 after the first `count`.
  """
  boxes = jnp.asarray(boxes, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  num, width = boxes.shape
  max_output = num if max_output is None else int(max_output)
  if num == 0 or max_output == 0:
    return jnp.full((max_output,), -1, jnp.int32), jnp.zeros((), jnp.int32)
  valid = jnp.ones((num,), bool) if valid is None else jnp.asarray(valid, bool)
  tile = max(1, min(int(tile_size), num))
  num_tiles = -(-num // tile)
  padded = num_tiles * tile
  capacity = min(max_output, num)
  capacity_padded = -(-capacity // tile) * tile

  iota = jnp.arange(num, dtype=jnp.int32)
  _, _, order = lax.sort(((~valid).astype(jnp.int32), -scores, iota), num_keys=3)
  pad = padded - num
  sorted_boxes = jnp.pad(boxes[order], ((0, pad), (0, 0)))
  sorted_valid = jnp.pad(valid[order], (0, pad))
  sorted_index = jnp.pad(order, (0, pad), constant_values=-1)
  has_classes = classes is not None
  sorted_class = (jnp.pad(jnp.asarray(classes, jnp.int32)[order], (0, pad)) if has_classes
                  else jnp.zeros((padded,), jnp.int32))
  earlier = jnp.arange(tile)[None, :] < jnp.arange(tile)[:, None]  # [i, j]: j before i

  def cond(state):
    t, count = state[0], state[1]
    first_valid = sorted_valid[jnp.minimum(t * tile, padded - 1)]
    return (t < num_tiles) & (count < capacity) & first_valid

  def body(state):
    t, count, kept_boxes, kept_class, kept_index = state
    start = t * tile
    tile_boxes = lax.dynamic_slice_in_dim(sorted_boxes, start, tile)
    tile_valid = lax.dynamic_slice_in_dim(sorted_valid, start, tile)
    tile_class = lax.dynamic_slice_in_dim(sorted_class, start, tile)
    tile_index = lax.dynamic_slice_in_dim(sorted_index, start, tile)
    cls_a = tile_class if has_classes else None

    def against_kept(chunk, suppressed):
      offset = chunk * tile
      k_boxes = lax.dynamic_slice_in_dim(kept_boxes, offset, tile)
      k_class = lax.dynamic_slice_in_dim(kept_class, offset, tile) if has_classes else None
      k_live = (offset + jnp.arange(tile)) < count
      over = _overlapping(tile_boxes, k_boxes, iou_threshold, cls_a, k_class)
      return suppressed | jnp.any(over & k_live[None, :], axis=1)

    num_chunks = (count + tile - 1) // tile
    suppressed = lax.fori_loop(0, num_chunks, against_kept, jnp.zeros((tile,), bool))
    candidate = tile_valid & ~suppressed

    def resolve_within(candidate):
      within = _overlapping(tile_boxes, tile_boxes, iou_threshold, cls_a, cls_a) & earlier

      def step(fixed):
        keep, _ = fixed
        new = candidate & ~jnp.any(within & keep[None, :], axis=1)
        return new, jnp.any(new != keep)

      return lax.while_loop(lambda fixed: fixed[1], step, (candidate, jnp.array(True)))[0]

    # most tiles of a crowded image keep 0 or 1 candidates: nothing left to resolve
    keep = lax.cond(jnp.sum(candidate.astype(jnp.int32)) > 1, resolve_within,
                    lambda candidate: candidate, candidate)
    # append: the kept boxes of the tile first (in rank order), written as one block at
    # `count` (an in-place dynamic_update_slice; a scatter would copy the buffers)
    packed = jnp.argsort(~keep, stable=True)
    kept_boxes = lax.dynamic_update_slice_in_dim(kept_boxes, tile_boxes[packed], count, 0)
    kept_class = lax.dynamic_update_slice_in_dim(kept_class, tile_class[packed], count, 0)
    kept_index = lax.dynamic_update_slice_in_dim(kept_index, tile_index[packed], count, 0)
    count = jnp.minimum(count + jnp.sum(keep.astype(jnp.int32)), capacity)
    return t + 1, count, kept_boxes, kept_class, kept_index

  # one spare tile, so that a block written at `count < capacity` always fits
  buffer = capacity_padded + tile
  state = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
           jnp.zeros((buffer, width), jnp.float32), jnp.zeros((buffer,), jnp.int32),
           jnp.full((buffer,), -1, jnp.int32))
  _, count, _, _, kept_index = lax.while_loop(cond, body, state)
  if buffer < max_output:
    kept_index = jnp.concatenate([kept_index, jnp.full((max_output - buffer,), -1, jnp.int32)])
  indices = kept_index[:max_output]
  return jnp.where(jnp.arange(max_output) < count, indices, -1), count


def batched_nms(boxes: jax.Array, scores: jax.Array, classes: jax.Array, *, iou_threshold,
                max_output: Optional[int] = None, valid: Optional[jax.Array] = None
                ) -> tuple[jax.Array, jax.Array]:
  """`nms` within each class (boxes of different classes never suppress each other)."""
  return nms(boxes, scores, iou_threshold=iou_threshold, max_output=max_output,
             classes=classes, valid=valid)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, *, iou_threshold: float,
              max_output: Optional[int] = None, classes: Optional[np.ndarray] = None,
              valid: Optional[np.ndarray] = None) -> np.ndarray:
  """The reference greedy NMS: a plain loop, one kept box at a time.

  Same arguments and semantics as `nms`; returns the kept indices `(K,)` int64
  in greedy order (no padding).
  """
  boxes = np.asarray(boxes, np.float32)
  scores = np.asarray(scores, np.float32)
  num = boxes.shape[0]
  valid = np.ones(num, bool) if valid is None else np.asarray(valid, bool)
  order = np.argsort(-scores, kind="stable")
  order = order[valid[order]]
  limit = num if max_output is None else max_output
  keep = []
  while order.size and len(keep) < limit:
    first, rest = order[0], order[1:]
    keep.append(first)
    over = box_ops.box_iou(boxes[first:first + 1], boxes[rest])[0] > np.float32(iou_threshold)
    if classes is not None:
      over &= classes[rest] == classes[first]
    order = rest[~over]
  return np.asarray(keep, np.int64)
