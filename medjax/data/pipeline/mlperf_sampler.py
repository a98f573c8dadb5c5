"""The training input of the MLPerf 3D U-Net: epochs over the cases, balanced crops, and
the reference's augmentations, on the host.

mlcommons/training `retired_benchmarks/unet3d/pytorch/data_loading/` (the
reference; `image_segmentation/pytorch` until its retirement):

* epochs (`data_loader.py`): each epoch visits every training case once in a
  new random order (`DataLoader(shuffle=True, drop_last=True)`; with several
  workers `DistributedSampler`), one patch per case, and drops the last
  incomplete global batch: an epoch is `N // B` steps of `B` samples
  (`samples_per_epoch` of `main.py`);
* `RandBalancedCrop(patch_size, oversampling=0.4)` (`pytorch_loader.py`): with
  probability `oversampling` per sample (not a fixed share of each batch, as
  nnU-Net's oversampling) the patch is placed around a foreground object:
  a class drawn uniformly among the foreground classes present, the bounding
  boxes of that class's connected components (`scipy.ndimage.label` /
  `find_objects`), the two largest by box volume, one of them at random, and a
  window of the patch size around it, shifted at random (or inside it when it
  is larger than the patch); otherwise a uniform random crop, whose start is
  `randrange(size - patch)` (never the last position, as the reference);
* `get_train_transforms`: `RandFlip` (each of the three axes with probability
  1/3), `RandomBrightnessAugmentation(factor=0.3, prob=0.1)`, which multiplies
  the image by `1 + U(0.7, 1.3)` (i.e. by 1.7 to 2.3: the reference's code),
  and `GaussianNoise(mean=0, std=0.1, prob=0.1)`, noise of standard deviation
  `U(0, 0.1)`, in that order.

`medjax.data.pipeline.augment` (nnU-Net's device-side transforms) does not
express these: its mirroring flips with probability 1/2, its noise draws the
variance and comes before the brightness change. So this module applies them
on the host, in the reference's order, as the reference's data loader does.

The bounding boxes are computed once per case at prepare time
(`foreground_boxes`, the `kits19` builder's `boxes` feature). Every batch is a
pure function of `(seed, step, global sample index)` (the epoch permutation from
`(seed, epoch)`), so a resumed run sees the batches an uninterrupted one sees.
"""
from __future__ import annotations

import collections
import threading
from typing import Any, Iterator, Sequence

import numpy as np
import scipy.ndimage

from medjax.data.pipeline import loaders
from medjax.errors import InputError

OVERSAMPLING = 0.4  # runtime/arguments.py --oversampling
FLIP_PROBABILITY = 1.0 / 3.0  # RandFlip: 1 / len(axes)
BRIGHTNESS = (0.3, 0.1)  # RandomBrightnessAugmentation(factor, prob)
NOISE = (0.1, 0.1)  # GaussianNoise(std, prob)


def foreground_boxes(label: np.ndarray) -> np.ndarray:
  """The candidate objects of `RandBalancedCrop.rand_foreg_cropd`, per foreground class.

  For each class present (`np.unique(label[label > 0])`): the bounding boxes of its
  connected components, the two of largest box volume (`np.argsort(volumes)[-2:]`).

  Returns:
    int32 `(M, 1 + 2 * ndim)` rows `[class, start_0, .., start_d, stop_0, .., stop_d]`.
  """
  label = np.asarray(label)
  ndim = label.ndim
  rows = []
  for c in np.unique(label[label > 0]):
    slices = scipy.ndimage.find_objects(scipy.ndimage.label(label == c)[0])
    slices = [s for s in slices if s is not None]
    volumes = [np.prod([s.stop - s.start for s in sl]) for sl in slices]
    for i in np.argsort(volumes)[-2:]:
      rows.append([int(c)] + [s.start for s in slices[i]] + [s.stop for s in slices[i]])
  return np.asarray(rows, np.int32).reshape(-1, 1 + 2 * ndim)


def _randrange(rng: np.random.Generator, n: int) -> int:
  """`RandBalancedCrop.randrange`: 0 for an empty range, else uniform in [0, n)."""
  return 0 if n <= 0 else int(rng.integers(n))


def _around(rng: np.random.Generator, start: int, stop: int, patch: int, size: int
            ) -> tuple[int, int]:
  """`rand_foreg_cropd.adjust` for one axis: a window of `patch` voxels placed at random
  around `[start, stop)` (inside it when it is longer), kept within `[0, size)`."""
  diff = patch - (stop - start)
  sign = -1 if diff < 0 else 1
  diff = abs(diff)
  ladj = _randrange(rng, diff)
  hadj = diff - ladj
  low = max(0, start - sign * ladj)
  high = min(size, stop + sign * hadj)
  diff = patch - (high - low)
  if diff > 0 and low == 0:
    high += diff
  elif diff > 0:
    low -= diff
  return low, high


def crop_window(rng: np.random.Generator, shape: Sequence[int], boxes: np.ndarray,
                patch_size: Sequence[int], oversampling: float = OVERSAMPLING
                ) -> tuple[slice, ...]:
  """`RandBalancedCrop.__call__`: the patch's window in a case of `shape`.

  Args:
    shape: the case's spatial shape, at least `patch_size` on every axis.
    boxes: `foreground_boxes(label)` of the case.
  """
  if any(n < p for n, p in zip(shape, patch_size)):
    raise InputError(f"a case of shape {tuple(shape)} is smaller than the patch "
                     f"{tuple(patch_size)}; the MLPerf preprocessing pads cases to at least the "
                     "patch size (kits19 dataset_kwargs.min_shape)")
  ndim = len(shape)
  if rng.random() < oversampling and len(boxes):
    classes = np.unique(boxes[:, 0])
    cl = classes[int(rng.integers(len(classes)))]
    candidates = boxes[boxes[:, 0] == cl]
    box = candidates[int(rng.integers(len(candidates)))]
    return tuple(slice(*_around(rng, int(box[1 + a]), int(box[1 + ndim + a]), int(p), int(n)))
                 for a, (n, p) in enumerate(zip(shape, patch_size)))
  starts = [_randrange(rng, n - p) for n, p in zip(shape, patch_size)]
  return tuple(slice(s, s + int(p)) for s, p in zip(starts, patch_size))


def augment(rng: np.random.Generator, image: np.ndarray, label: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
  """`RandFlip`, `Cast`, `RandomBrightnessAugmentation`, `GaussianNoise` of one patch
  `(*S)` (module docstring); float32 image, uint8 label."""
  for axis in range(label.ndim):
    if rng.random() < FLIP_PROBABILITY:
      image, label = np.flip(image, axis), np.flip(label, axis)
  image = np.ascontiguousarray(image, np.float32)
  label = np.ascontiguousarray(label, np.uint8)
  factor, p = BRIGHTNESS
  if rng.random() < p:
    image = (image * np.float32(1.0 + rng.uniform(1.0 - factor, 1.0 + factor))).astype(np.float32)
  std, p = NOISE
  if rng.random() < p:
    scale = rng.uniform(0.0, std)
    image = image + rng.normal(0.0, scale, size=image.shape).astype(np.float32)
  return image, label


class _Cases:
  """Decoded cases `(image (*S), label (*S), boxes)` by index, the `capacity` most
  recently used kept (all of them when `capacity` is 0); thread-safe for grain's workers."""

  def __init__(self, source: Sequence[dict[str, Any]], capacity: int):
    self.source, self.capacity = source, int(capacity)
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int):
    with self._lock:
      if index in self._cache:
        self._cache.move_to_end(index)
        return self._cache[index]
    example = self.source[index]
    image = np.asarray(example["image"], np.float32)
    label = np.asarray(example["label"])
    boxes = (np.asarray(example["boxes"], np.int32) if "boxes" in example
             else foreground_boxes(label))
    if image.shape[:label.ndim] != label.shape:
      raise InputError(f"{loaders._case_id(example, index)}: image {image.shape} and label "
                       f"{label.shape} differ in shape")
    case = (image, label, boxes)
    with self._lock:
      self._cache[index] = case
      if self.capacity and len(self._cache) > self.capacity:
        self._cache.popitem(last=False)
    return case


def steps_per_epoch(num_cases: int, global_batch_size: int) -> int:
  """`N // B`: an epoch's steps, the last incomplete batch dropped (reference README)."""
  if num_cases < global_batch_size:
    raise InputError(f"{num_cases} training cases for a global batch of {global_batch_size}: "
                     "an epoch needs at least one full batch (lower config.global_batch_size)")
  return num_cases // global_batch_size


def train_batches(source: Sequence[dict[str, Any]], *, patch_size: Sequence[int],
                  global_batch_size: int, seed: int, num_steps: int, start_step: int = 0,
                  oversampling: float = OVERSAMPLING, process_index: int = 0,
                  process_count: int = 1, worker_count: int = 0, cache_size: int = 0
                  ) -> Iterator[dict[str, np.ndarray]]:
  """The reference's training batches for steps `start_step..num_steps-1`.

  Global sample `g` of step `s` is position `t = s * B + g` of the run; it reads
  case `permutation_e[t % (k B)]` with `k = N // B` steps per epoch, epoch
  `e = t // (k B)` and `permutation_e = default_rng([seed, e]).permutation(N)`,
  then crops and augments it with `default_rng([seed, s, g])`.

  Args:
    source: random-access cases with `image` `(*S)` (normalised), `label` `(*S)` and
      optionally `boxes` (`foreground_boxes`, computed on first use otherwise).
    cache_size: decoded cases kept in memory (0: every case, as the reference's
      workers read them from the page cache).

  Yields:
    `{"image": float32 (b, *patch, 1), "label": uint8 (b, *patch)}`, `b = B / processes`.
  """
  local = loaders._local_batch_size(global_batch_size, process_index, process_count)
  loaders._check_seed(seed)
  if not 0.0 <= oversampling <= 1.0:
    raise InputError(f"oversampling={oversampling}: expected a probability in [0, 1]")
  cases = _Cases(source, cache_size)
  per_epoch = steps_per_epoch(len(cases), global_batch_size) * global_batch_size
  patch_size = tuple(int(p) for p in patch_size)

  def case_at(position: int) -> int:
    order = np.random.default_rng([seed, position // per_epoch]).permutation(len(cases))
    return int(order[position % per_epoch])

  def batch_fn(step: int) -> dict[str, np.ndarray]:
    images, labels = [], []
    for g in range(process_index * local, (process_index + 1) * local):
      rng = np.random.default_rng([seed, step, g])
      image, label, boxes = cases[case_at(step * global_batch_size + g)]
      window = crop_window(rng, label.shape, boxes, patch_size, oversampling)
      image, label = augment(rng, image[window], label[window])
      images.append(image)
      labels.append(label)
    return {"image": np.stack(images)[..., None], "label": np.stack(labels)}

  return loaders._iterate(batch_fn, start_step, num_steps, worker_count)


__all__ = ["foreground_boxes", "crop_window", "augment", "steps_per_epoch", "train_batches",
           "OVERSAMPLING"]
