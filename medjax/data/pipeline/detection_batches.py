"""Detection training batches: patches with their lesions' boxes, padded to a fixed count.

A detection case (`medjax.data.builders.detection_examples`: image in HU,
`instances`, padded `boxes` / `classes` / `num_boxes`) gives patches as
nnU-Net / nnDetection sample them (Isensee et al. 2021; Baumgartner et al.
2021): in each global batch the last `num_foreground_samples` samples are
placed so that the centre of a randomly chosen lesion of the case lies inside
the patch (at least `margin` voxels from its border where the patch and volume allow);
the others are uniform. A case without lesions gives a uniform patch for both
kinds, so a batch without any lesion is an ordinary batch. Each patch is
flipped along each of `flip_axes` with probability 1/2.

The boxes of a patch are those of the instances visible in it, recomputed
from the cropped (and flipped) instance map (`boxes.boxes_from_instances`: the
visible part of a lesion cut by the border), renumbered 1..k in instance
order, so `instances` and the padded boxes stay consistent for the Retina
U-Net's segmentation head.

Sample `g` of step `s` is drawn from `np.random.default_rng([seed, s, g])`,
as `loaders.train_batches` does (resumable, multi-process).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from medjax.data.pipeline import case_cache, loaders, transforms
from medjax.detection import boxes as box_ops
from medjax.errors import InputError

Normalize = transforms.Normalize


class DetectionCases:
  """Decoded training cases (normalised image `(*S, C)`, instance map, classes), kept once read."""

  def __init__(self, source: Sequence[dict[str, Any]], normalize: Normalize):
    self.source = source
    self.normalize = normalize
    self._cases: dict[int, tuple] = {}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(image (*S, C) float32, instances (*S,) int32, boxes (M, 2n), classes (M,))`."""
    if index not in self._cases:
      example = self.source[index]
      name = case_cache.case_id(example, index)
      for key in ("image", "instances", "boxes", "classes", "num_boxes"):
        if key not in example:
          raise InputError(f"case {name}: no {key!r} feature; a detection dataset is expected "
                           "(medjax.data.builders.detection_examples)")
      instances = np.asarray(example["instances"]).astype(np.int32)
      image = case_cache.channels_last(
          transforms.check_image(np.asarray(example["image"]), name), instances,
          self.normalize, name)
      count = int(example["num_boxes"])
      self._cases[index] = (image, instances, np.asarray(example["boxes"])[:count],
                            np.asarray(example["classes"])[:count].astype(np.int32))
    return self._cases[index]


def _start(rng: np.random.Generator, size: int, patch: int, low: float, high: float,
           margin: int) -> int:
  """A patch start in `[0, size - patch]` keeping the point range `[low, high]` inside
  (with `margin`, else without) when it can."""
  last = max(size - patch, 0)
  for m in (margin, 0):
    lo = max(int(np.ceil(high + m - patch + 1)), 0)
    hi = min(int(np.floor(low - m)), last)
    if lo <= hi:
      return int(rng.integers(lo, hi + 1))
  return int(rng.integers(0, last + 1))


def _crop(array: np.ndarray, start: Sequence[int], patch: Sequence[int], fill) -> np.ndarray:
  """`array[start : start + patch]` on the leading axes, padded with `fill` past the end."""
  index = tuple(slice(s, s + p) for s, p in zip(start, patch))
  out = array[index]
  pad = [(0, p - n) for p, n in zip(patch, out.shape)] + [(0, 0)] * (array.ndim - len(patch))
  if any(after for _, after in pad):
    out = np.pad(out, pad, constant_values=fill)
  return out


def patch_targets(instances: np.ndarray, classes: np.ndarray, max_boxes: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """The padded targets of a patch's instance map `(*P,)`.

  Returns:
    `(instances (*P,) int32 renumbered 1..k, boxes (max_boxes, 2n) float32,
    classes (max_boxes,) int32 (-1 padding), k)`; lesions beyond `max_boxes` (by id) are
    dropped from the map too.
  """
  found, ids = box_ops.boxes_from_instances(instances)
  ids, found = ids[:max_boxes], found[:max_boxes]
  lut = np.zeros(int(max(instances.max(initial=0), 0)) + 1, np.int32)
  lut[ids] = np.arange(1, len(ids) + 1)
  n2 = 2 * instances.ndim
  boxes = np.zeros((max_boxes, n2), np.float32)
  boxes[:len(ids)] = found
  out_classes = np.full((max_boxes,), -1, np.int32)
  out_classes[:len(ids)] = classes[ids - 1] if len(ids) else []
  return lut[np.maximum(instances, 0)], boxes, out_classes, len(ids)


def detection_batches(source: Sequence[dict[str, Any]], *, patch_size: Sequence[int],
                      global_batch_size: int, seed: int, num_steps: int, start_step: int = 0,
                      foreground_fraction: float = 0.5, flip_axes: Sequence[int] = (0, 1, 2),
                      max_boxes: int = 16, margin: int = 4, process_index: int = 0,
                      process_count: int = 1, normalize: Normalize = transforms.normalize_ct,
                      worker_count: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Detection training batches for steps `start_step..num_steps-1` (module docstring).

  Yields:
    `{"image": float32 (B, *P, C), "instances": int32 (B, *P), "boxes": float32
    (B, max_boxes, 2n), "classes": int32 (B, max_boxes), "num_boxes": int32 (B,),
    "sampling_seed": uint32 (B,)}` (the last seeds the loss's hard-negative sampling).
  """
  local = loaders._local_batch_size(global_batch_size, process_index, process_count)
  loaders._check_seed(seed)
  patch = tuple(int(p) for p in patch_size)
  forced = loaders.num_foreground_samples(global_batch_size, foreground_fraction)
  cases = DetectionCases(source, normalize)
  if not len(cases):
    raise InputError("detection training: the training split has no case")
  for axis in flip_axes:
    if not -len(patch) <= axis < len(patch):
      raise InputError(f"flip_axes={tuple(flip_axes)}: axis {axis} out of range for "
                       f"{len(patch)}D patches")

  def sample(rng: np.random.Generator, foreground: bool):
    image, instances, boxes, classes = cases[int(rng.integers(len(cases)))]
    spatial = instances.shape
    if foreground and len(boxes):
      lo, hi = box_ops.box_lows_highs(np.asarray(boxes, np.float64)[int(rng.integers(len(boxes)))])
      center = (lo + hi) / 2 - 0.5
      start = [_start(rng, s, p, c, c, margin) for s, p, c in zip(spatial, patch, center)]
    else:
      start = [int(rng.integers(max(s - p, 0) + 1)) for s, p in zip(spatial, patch)]
    image = _crop(image, start, patch, float(image.min()))
    instances = _crop(instances, start, patch, 0)
    for axis in flip_axes:
      if rng.random() < 0.5:
        image, instances = np.flip(image, axis), np.flip(instances, axis)
    return (np.ascontiguousarray(image),) + patch_targets(np.ascontiguousarray(instances),
                                                          classes, max_boxes)

  def batch_fn(step: int) -> dict[str, np.ndarray]:
    rows = []
    for g in range(process_index * local, (process_index + 1) * local):
      rng = np.random.default_rng([seed, step, g])
      rows.append(sample(rng, g >= global_batch_size - forced))
    images, instances, boxes, classes, counts = zip(*rows)
    seeds = np.random.default_rng([seed, step, 0x5EED]).integers(0, 2 ** 31, local)
    return {"image": np.stack(images).astype(np.float32), "instances": np.stack(instances),
            "boxes": np.stack(boxes), "classes": np.stack(classes),
            "num_boxes": np.asarray(counts, np.int32), "sampling_seed": seeds.astype(np.uint32)}

  return loaders._iterate(batch_fn, start_step, num_steps, worker_count)
