"""grain input pipelines: resumable, multi-host patch batches and eval cases.

Every batch is a pure function of `(seed, step, global sample index)`: sample
`g` of step `s` is drawn with `np.random.default_rng([seed, s, g])`, and
process `p` of `P` produces the samples `g` in `[p * B, (p + 1) * B)` with
`B = global_batch_size // P`. Hence

* a run resumed at `start_step=s` sees exactly the batches an uninterrupted
  run sees from step `s` on (no iterator state to checkpoint: the step is
  enough);
* the processes of a multi-host run read disjoint shares of each global
  batch, and the global batch does not depend on the number of processes.

The pipeline is `grain.MapDataset.range(start_step, num_steps).map(batch_fn)`
turned into an `IterDataset` with a small prefetch buffer; `num_steps` is the
total length of the run (the last step is `num_steps - 1`).

Segmentation cases are not held in memory: `train_batches` reads them by
random access from the source through a small LRU of decoded cases
(`medjax.data.pipeline.case_cache`), so a dataset larger than RAM trains in the memory
of a few cases. Classification images are small and loaded once.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Optional, Sequence

import grain
import numpy as np

from medjax.data.pipeline import case_cache, patches, transforms
from medjax.errors import InputError

Normalize = transforms.Normalize
_case_id = case_cache.case_id


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise InputError(f"process_index={process_index}: expected 0 <= index < process_count={process_count}")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise InputError(f"global_batch_size={global_batch_size}: expected a positive multiple of "
                     f"process_count={process_count}")
  return global_batch_size // process_count


def _check_seed(seed: int) -> None:
  if int(seed) != seed or seed < 0:
    raise InputError(f"seed={seed}: expected a non-negative integer")


def num_foreground_samples(global_batch_size: int, foreground_fraction: float) -> int:
  """Foreground-forced samples per global batch: rounded, at least 1 if the fraction is > 0."""
  if not 0.0 <= foreground_fraction <= 1.0:
    raise InputError(f"foreground_fraction={foreground_fraction}: expected a value in [0, 1]")
  if foreground_fraction == 0:
    return 0
  return min(global_batch_size, max(1, int(np.floor(global_batch_size * foreground_fraction + 0.5))))


def _iterate(batch_fn: Callable[[int], dict[str, np.ndarray]], start_step: int, num_steps: int,
             worker_count: int) -> Iterator[dict[str, np.ndarray]]:
  if start_step < 0:
    raise InputError(f"start_step={start_step}: expected >= 0")
  dataset = grain.MapDataset.range(start_step, max(num_steps, start_step)).map(batch_fn)
  options = grain.ReadOptions(num_threads=max(1, worker_count), prefetch_buffer_size=2)
  return iter(dataset.to_iter_dataset(options))


def train_batches(source: Sequence[dict[str, Any]], *, patch_size: Sequence[int],
                  global_batch_size: int, foreground_fraction: float = 0.33,
                  flip_axes: Sequence[int] = (0, 1, 2), seed: int, start_step: int = 0,
                  num_steps: int, process_index: int = 0, process_count: int = 1,
                  normalize: Normalize = transforms.normalize_ct,
                  foreground_classes: Optional[Sequence[int]] = None,
                  num_classes: Optional[int] = None,
                  worker_count: int = 0,
                  cache_size: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Segmentation training batches of random patches, steps `start_step..num_steps-1`.

  Cases are drawn uniformly; in each global batch the last
  `num_foreground_samples(global_batch_size, foreground_fraction)` samples
  are centred on a foreground voxel (nnU-Net's foreground oversampling,
  Isensee et al. 2021, default 0.33), the others are uniform. Each patch is
  flipped along each of `flip_axes` with probability 1/2.

  Cases are read from `source` when a sample needs them and the most recently
  used are kept decoded (`case_cache.CaseCache`: `cache_size` cases, or by
  default as many as fit in `case_cache.DEFAULT_MAX_BYTES`); each is checked
  when decoded (a NaN voxel, a shape mismatch or a label outside
  `[0, num_classes)` raises an InputError naming the case while batches are
  drawn).

  Args:
    source: random-access cases with `image` `(*spatial)` or channels-last
      `(*spatial, C)`, `label` `(*spatial)`, and optionally `case` and
      `locations` (`(M, 1 + ndim)` rows `[class, i, j, ...]`, the
      foreground index stored at prepare time; computed once per case otherwise).
    normalize: applied to every channel of every decoded image (default:
      clip to [-200, 300] HU, z-score with the image's own statistics;
      `transforms.keep_intensities` for images normalised already).
    num_classes: when given, labels are checked to lie in [0, num_classes).
    worker_count: threads used by grain to prepare batches ahead.
    cache_size: decoded cases kept in memory (None: a 1 GiB budget).

  Yields:
    `{"image": float32 (B, *patch_size, C), "label": (B, *patch_size)}`
    with `B = global_batch_size // process_count` (`C = 1` for images without
    a channel axis), a pure function of `(seed, step, process_index)`. Labels
    are uint8 when the cases' are (the built-in and folder datasets with up to
    256 classes: 4x fewer label bytes to the device and through the soft-Dice
    kernel than int32), int32 otherwise.
  """
  local = _local_batch_size(global_batch_size, process_index, process_count)
  _check_seed(seed)
  patch_size = tuple(int(p) for p in patch_size)
  forced = num_foreground_samples(global_batch_size, foreground_fraction)
  cases = case_cache.CaseCache(source, patch_size, normalize=normalize,
                               foreground_classes=foreground_classes, num_classes=num_classes,
                               capacity=cache_size)
  for axis in flip_axes:
    if not -len(patch_size) <= axis < len(patch_size):
      raise InputError(f"flip_axes={tuple(flip_axes)}: axis {axis} out of range for "
                       f"{len(patch_size)}D patches")

  def batch_fn(step: int) -> dict[str, np.ndarray]:
    images, labels = [], []
    for g in range(process_index * local, (process_index + 1) * local):
      rng = np.random.default_rng([seed, step, g])
      case = cases[int(rng.integers(len(cases)))]
      image, label = patches.sample_patch(
          rng, case.image, case.label, patch_size,
          force_foreground=g >= global_batch_size - forced,
          foreground_classes=foreground_classes, locations=case.locations)
      image, label = transforms.random_flip(rng, image, label, flip_axes)
      images.append(image)
      labels.append(label)
    label_batch = np.stack(labels)
    return {"image": np.stack(images).astype(np.float32),
            "label": label_batch if label_batch.dtype == np.uint8 else label_batch.astype(np.int32)}

  return _iterate(batch_fn, start_step, num_steps, worker_count)


def eval_cases(source: Sequence[dict[str, Any]], *,
               normalize: Normalize = transforms.normalize_ct) -> Iterator[dict[str, Any]]:
  """Whole evaluation cases, one at a time.

  Yields:
    `{"image": float32 (*spatial, C) normalised (each channel; `C = 1` for
    an image `(*spatial)`), "label": int32 (*spatial), "spacing": float32
    (ndim,), "case": str}`.
  """
  for index in range(len(source)):
    example = source[index]
    name = _case_id(example, index)
    label = np.asarray(example["label"]).astype(np.int32)
    image = case_cache.channels_last(transforms.check_image(example["image"], name), label,
                                     normalize, name)
    spacing = np.asarray(example.get("spacing", np.ones(label.ndim)), np.float32)
    yield {"image": image, "label": label, "spacing": spacing, "case": name}


def classification_batches(source: Sequence[dict[str, Any]], *, global_batch_size: int,
                           seed: int, start_step: int = 0, num_steps: int,
                           process_index: int = 0, process_count: int = 1,
                           label_key: str = "lesion",
                           normalize: Normalize = transforms.normalize_ct,
                           flip_axes: Sequence[int] = (),
                           image_shape: Optional[Sequence[int]] = None,
                           channels: int = 1,
                           worker_count: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Image-level classification batches (e.g. lesion present, patch class) over shuffled epochs.

  Global sample position `t = step * global_batch_size + g` reads image
  `perm_e[t % N]` with `perm_e = default_rng([seed, e]).permutation(N)` and
  epoch `e = t // N`: every image is seen once per epoch, and the batch is a
  pure function of `(seed, step, process_index)`. 2D and 3D images alike
  (all of one shape); each is flipped along each of `flip_axes` (spatial
  axes) with probability 1/2.

  Args:
    label_key: the example's image-level integer label (``"lesion"`` for
      ``synthetic_organs/2d``, ``"label"`` for the patch configs).
    normalize: applied to every image once (default: per-image z-score in
      the [-200, 300] HU window).
    image_shape: when given, the spatial shape every image must have (the model's
      input size, e.g. `config.patch_size`).
    channels: of every image (`classification_images`).

  Yields:
    `{"image": float32 (B, *S, C), "label": int32 (B,)}`.
  """
  local = _local_batch_size(global_batch_size, process_index, process_count)
  _check_seed(seed)
  loaded = list(classification_images(source, label_key=label_key, normalize=normalize,
                                      channels=channels))
  images = [image for _, image, _ in loaded]
  targets = [label for _, _, label in loaded]
  count = len(images)
  shape = images[0].shape[:-1] if image_shape is None else tuple(int(n) for n in image_shape)
  for (name, _, _), image in zip(loaded, images):
    if image.shape[:-1] != shape:
      raise InputError(f"{name}: image shape {image.shape[:-1]}; expected {shape} "
                       f"({'the first image' if image_shape is None else 'image_shape'}): "
                       "images of one shape, the model's input size")
  for axis in flip_axes:
    if not -len(shape) <= axis < len(shape):
      raise InputError(f"flip_axes={tuple(flip_axes)}: axis {axis} out of range for "
                       f"{len(shape)}D images")
  flip_axes = tuple(axis % len(shape) for axis in flip_axes)  # spatial, not the channel axis

  @functools.lru_cache(maxsize=4)
  def permutation(epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)

  def batch_fn(step: int) -> dict[str, np.ndarray]:
    batch_images, batch_labels = [], []
    for g in range(process_index * local, (process_index + 1) * local):
      position = step * global_batch_size + g
      epoch = position // count
      index = int(permutation(epoch)[position % count])
      image = images[index]
      if flip_axes:
        image, _ = transforms.random_flip(np.random.default_rng([seed, step, g]), image,
                                          np.zeros(image.shape[:-1], np.uint8), flip_axes)
      batch_images.append(image)
      batch_labels.append(targets[index])
    return {"image": np.stack(batch_images).astype(np.float32),
            "label": np.asarray(batch_labels, np.int32)}

  return _iterate(batch_fn, start_step, num_steps, worker_count)


def classification_images(source: Sequence[dict[str, Any]], *, label_key: str = "lesion",
                          normalize: Normalize = transforms.normalize_ct, channels: int = 1
                          ) -> Iterator[tuple[str, np.ndarray, int]]:
  """Every image of `source` in order, for training or evaluation.

  `channels`: 1 for images stored without a channel axis (`(*S)`, grey), else the size of
  their last axis (`(*S, C)`, e.g. 3 for RGB); `normalize` is applied to each channel
  (as in segmentation and prediction).

  Yields:
    `(case id, float32 image (*S, C) normalised, image-level label)`; the
    case id is the example's `case` feature (else `case_<index>`), the label
    the integer feature `label_key`.
  """
  if len(source) == 0:
    raise InputError("classification source is empty: expected at least one image")
  for index in range(len(source)):
    example = source[index]
    name = _case_id(example, index)
    if label_key not in example:
      raise InputError(f"{name}: no {label_key!r} feature; expected an image-level label "
                       f"(features: {', '.join(sorted(example))})")
    target = np.asarray(example[label_key])
    if target.ndim != 0 or target.dtype.kind not in "iub":
      raise InputError(f"{name}: feature {label_key!r} has shape {target.shape} and dtype "
                       f"{target.dtype}; expected one integer class per image")
    image = transforms.check_image(example["image"], name)
    if channels > 1 and (image.ndim < 2 or image.shape[-1] != channels):
      raise InputError(f"{name}: image of shape {image.shape}; expected {channels} channels "
                       "on its last axis (config.in_channels)")
    yield name, transforms.per_channel(normalize)(image if channels > 1 else image[..., None]), \
        int(target)


fixed_window = transforms.fixed_window
