"""Patch-level classification data cut from the synthetic CT of `medjax.data.phantoms.organ_ct`.

The patch-level setting of lesion classification (PatchCamelyon, Veeling et
al. 2018; MedMNIST, Yang et al. 2023): instead of "is there a lesion
somewhere in this slice?" (a ~1 % lesion, an image-level label), a small
patch is labelled by what lies at its centre:

* 2 tumour: the centre voxel is tumour (anywhere in the tumour, its blurred
  border included -- a centre on a small tumour is genuinely hard);
* 1 organ: the centre voxel is organ and no tumour voxel lies in the patch's
  centre region (the central half of the patch along every axis);
  tumour may still appear in the outer ring of the patch;
* 0 background: the centre voxel is background, inside the body (not air),
  at most `background_band_mm` from the organ (the tissue the organ must be
  told apart from: muscle ~40 HU against organ ~60 HU, and the organ border),
  and no tumour voxel in the centre region.

Patches are cut from the full images, with their blur, bias field and noise:
contrast and noise are those of the volumes (tumour 25-45 HU below the organ
under ~20 HU noise), nothing is made easier. Centres are only drawn where the
whole patch fits inside the image (no padding).

Every source image contributes `per_image` patches of each class (centres
drawn uniformly without replacement among that class's candidates), so all
three classes come from the same images in the same proportion; images
without a valid tumour centre (2D slices without a tumour) are skipped.
Everything is a pure function of the image seeds.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from medjax.data.phantoms import organ_ct

CLASS_NAMES = organ_ct.CLASS_NAMES  # ("background", "organ", "tumour"): class id = label value
BODY_MIN_HU = -500.0  # air is -1000 HU, every tissue of the body is above -200


def centre_region(patch_size: Sequence[int]) -> tuple[int, ...]:
  """Size of the centre region: the central half of the patch along each axis (at least 1)."""
  return tuple(max(1, int(p) // 2) for p in patch_size)


def _fits(shape: Sequence[int], patch_size: Sequence[int]) -> np.ndarray:
  """Boolean `(*shape)`: True where a patch centred there lies inside the image."""
  inside = np.ones(tuple(shape), bool)
  for axis, (n, p) in enumerate(zip(shape, patch_size)):
    view = [1] * len(shape)
    view[axis] = n
    index = np.arange(n).reshape(view)
    start = index - p // 2
    inside &= (start >= 0) & (start + p <= n)
  return inside


def candidate_centres(image: np.ndarray, label: np.ndarray, spacing: Sequence[float],
                      patch_size: Sequence[int], *,
                      background_band_mm: float = 20.0) -> dict[int, np.ndarray]:
  """Flat indices of the voxels where a patch of each class may be centred.

  Args:
    image: `(*S)` HU; label: `(*S)` 0/1/2 (background/organ/tumour).
    spacing: mm per axis; patch_size: `(*P)`, same number of axes.
    background_band_mm: background centres lie at most this far from the organ.

  Returns:
    `{class id: sorted flat indices into (*S)}` for 0 background, 1 organ,
    2 tumour, following the definitions of the module docstring.
  """
  patch_size = tuple(int(p) for p in patch_size)
  if image.shape != label.shape or len(patch_size) != label.ndim:
    raise ValueError(f"image {image.shape}, label {label.shape} and patch {patch_size} "
                     "must have the same number of axes and shapes")
  fits = _fits(label.shape, patch_size)
  tumour = label == 2
  tumour_near = ndimage.maximum_filter(tumour, size=centre_region(patch_size), mode="constant")
  organ = label >= 1
  distance = ndimage.distance_transform_edt(~organ, sampling=spacing) if organ.any() \
      else np.full(label.shape, np.inf)
  background = ((label == 0) & (image > BODY_MIN_HU) & (distance <= background_band_mm)
                & ~tumour_near)
  masks = {0: background, 1: (label == 1) & ~tumour_near, 2: tumour}
  return {c: np.flatnonzero(m & fits) for c, m in masks.items()}


def cut_patch(array: np.ndarray, centre: Sequence[int], patch_size: Sequence[int]) -> np.ndarray:
  """The `(*P)` block of `array` whose voxel `P // 2` is `centre` (it must fit)."""
  box = tuple(slice(c - p // 2, c - p // 2 + p) for c, p in zip(centre, patch_size))
  out = array[box]
  if out.shape != tuple(patch_size):
    raise ValueError(f"patch {tuple(patch_size)} at {tuple(centre)} does not fit in {array.shape}")
  return np.ascontiguousarray(out)


def source_image(seed: int, ndim: int, shape: Sequence[int],
                 spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  """`(image, label)` of the synthetic volume (3D) or slice (2D) of `seed`."""
  if ndim == 3:
    return organ_ct.make_volume(seed, shape, spacing)
  image, label, _ = organ_ct.make_slice(seed, shape, spacing)
  return image, label


def class_counts(size: int, num_classes: int = 3) -> tuple[int, ...]:
  """Balanced counts summing to `size` (the first `size % K` classes get one more)."""
  return tuple(size // num_classes + (c < size % num_classes) for c in range(num_classes))


def generate(first_seed: int, size: int, *, ndim: int, shape: Sequence[int],
             spacing: Sequence[float], patch_size: Sequence[int], per_image: int,
             background_band_mm: float = 20.0, max_images: int = 100_000) -> Iterator[dict]:
  """`size` patches, class-balanced (`class_counts`), from images `first_seed, first_seed + 1, ...`.

  Image `i` (seed `first_seed + i`) gives up to `per_image` patches of each
  class still needed, its centres drawn with `default_rng([seed, 11])`; the
  order of the patches is image by image, class by class.

  Yields:
    dicts with `image` float32 `(*P)` HU, `mask` uint8 `(*P)` (the label
    map of the patch), `label` int (class of the centre), `image_index` (i),
    `centre` int32 `(ndim,)` (voxel of the source image).
  """
  patch_size = tuple(int(p) for p in patch_size)
  needed = list(class_counts(size))
  for i in range(max_images):
    if not any(needed):
      return
    seed = first_seed + i
    image, label = source_image(seed, ndim, shape, spacing)
    candidates = candidate_centres(image, label, spacing, patch_size,
                                   background_band_mm=background_band_mm)
    if any(len(candidates[c]) < min(per_image, needed[c]) for c in range(3)):
      continue  # e.g. a slice without tumour: every class or none from an image
    rng = np.random.default_rng([seed, 11])
    for c in range(3):
      take = min(per_image, needed[c])
      if not take:
        continue
      picks = np.sort(rng.choice(candidates[c], size=take, replace=False))
      for flat in picks:
        centre = np.unravel_index(int(flat), label.shape)
        yield {"image": cut_patch(image, centre, patch_size),
               "mask": cut_patch(label, centre, patch_size),
               "label": c, "image_index": i,
               "centre": np.asarray(centre, np.int32)}
      needed[c] -= take
  raise RuntimeError(f"only {size - sum(needed)} of {size} patches after {max_images} images")
