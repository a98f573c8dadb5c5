"""The MLPerf 3D U-Net preprocessing of a KiTS19 case, as the reference does it.

mlcommons/training `retired_benchmarks/unet3d/pytorch/preprocess_dataset.py`
(`image_segmentation/pytorch` until its retirement), class `Preprocessor`:

1. `load_pair`: `nibabel.load(case/imaging.nii.gz)` and `segmentation.nii.gz`,
   the spacing `header["pixdim"][1:4]` (array-axis order: the slice axis
   first in KiTS19), `get_fdata()` as float32 (image) and uint8 (label), no
   reorientation;
2. `resample3d`, when the spacing is not `TARGET_SPACING` = (1.6, 1.2, 1.2) mm:
   new shape `(spacing / target * shape).astype(int)` (truncated), the image
   by `torch.nn.functional.interpolate(mode="trilinear", align_corners=True)`
   and the label by `mode="nearest"`; here
   `medjax.data.preprocessing.resampling` with `grid="corners"` (order 1) and
   `grid="asymmetric"` (order 0), which sample the same positions;
3. `normalize_intensity`: clip to [-79, 304] HU, `(x - 101.0) / 76.9`, float32;
4. `pad_to_min_shape`: edge padding (`np.pad(mode="edge")`, image and label)
   of every axis shorter than 128, `bounds // 2` before and the rest after.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np

from medjax.data.preprocessing import resampling
from medjax.errors import InputError

# preprocess_dataset.py
MEAN_VAL = 101.0
STDDEV_VAL = 76.9
MIN_CLIP_VAL = -79.0
MAX_CLIP_VAL = 304.0
TARGET_SPACING = (1.6, 1.2, 1.2)
TARGET_SHAPE = (128, 128, 128)
IMAGE_FILE = "imaging.nii.gz"
LABEL_FILE = "segmentation.nii.gz"


class RawCase(NamedTuple):
  """One KiTS19 case as read from its folder: image float32 `(D, H, W)` in HU,
  label uint8 `(D, H, W)`, spacing in mm per array axis."""
  image: np.ndarray
  label: np.ndarray
  spacing: tuple[float, ...]


def read_case(case_dir: str) -> RawCase:
  """`Preprocessor.load_pair`: the case folder's two NIfTI files, as the reference reads them.

  Raises:
    InputError: a file is missing or unreadable, or image and label differ in shape.
  """
  import nibabel  # pylint: disable=import-outside-toplevel

  arrays = []
  for name in (IMAGE_FILE, LABEL_FILE):
    path = os.path.join(case_dir, name)
    try:
      arrays.append(nibabel.load(path))
    except FileNotFoundError:
      raise InputError(f"{path}: missing; expected a KiTS19 case folder with {IMAGE_FILE} and "
                       f"{LABEL_FILE}") from None
    except Exception as e:  # nibabel raises several types for a corrupt file
      raise InputError(f"{path}: not a readable NIfTI file ({str(e).splitlines()[0][:160]})") \
          from None
  image_nii, label_nii = arrays
  spacing = tuple(float(s) for s in image_nii.header["pixdim"][1:4].tolist())
  try:
    image = image_nii.get_fdata().astype(np.float32)
    label = label_nii.get_fdata().astype(np.uint8)
  except Exception as e:  # a truncated .gz fails here
    raise InputError(f"{case_dir}: unreadable image data ({str(e).splitlines()[0][:160]})") \
        from None
  if image.ndim != 3 or image.shape != label.shape:
    raise InputError(f"{case_dir}: image of shape {image.shape} and segmentation of shape "
                     f"{label.shape}; expected two 3D arrays of one shape")
  if not np.all(np.isfinite(image)):
    raise InputError(f"{os.path.join(case_dir, IMAGE_FILE)}: NaN/inf voxels; expected CT in HU")
  return RawCase(image, label, spacing)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                    target_spacing: Sequence[float] = TARGET_SPACING) -> tuple[int, ...]:
  """`(np.array(spacing) / np.array(target) * np.array(shape)).astype(int)` (`resample3d`)."""
  new = (np.array(spacing, np.float64) / np.array(target_spacing, np.float64)
         * np.array(shape)).astype(int)
  return tuple(int(n) for n in new)


def resample(image: np.ndarray, label: np.ndarray, spacing: Sequence[float]
             ) -> tuple[np.ndarray, np.ndarray]:
  """`Preprocessor.resample3d`: image trilinear (align_corners), label nearest, to the
  target spacing; unchanged when `spacing` equals it exactly."""
  if list(spacing) == list(TARGET_SPACING):
    return image, label
  new_shape = resampled_shape(image.shape, spacing)
  if min(new_shape) < 1:
    raise InputError(f"spacing {tuple(spacing)} and shape {image.shape}: resampling to "
                     f"{TARGET_SPACING} mm gives an empty axis ({new_shape})")
  image = resampling.resample_image(image, new_shape, order=1, grid="corners")
  label = resampling.resample_labels(label, new_shape, order=0, grid="asymmetric")
  return image, label


def normalize_intensity(image: np.ndarray) -> np.ndarray:
  """`Preprocessor.normalize_intensity`: clip to [-79, 304], then `(x - 101) / 76.9` (float32)."""
  image = np.clip(np.asarray(image, np.float32), MIN_CLIP_VAL, MAX_CLIP_VAL)
  return ((image - np.float32(MEAN_VAL)) / np.float32(STDDEV_VAL)).astype(np.float32)


def pad_to_min_shape(image: np.ndarray, label: np.ndarray,
                     min_shape: Sequence[int] = TARGET_SHAPE) -> tuple[np.ndarray, np.ndarray]:
  """`Preprocessor.pad_to_min_shape`: edge padding up to `min_shape`, `bounds // 2` before."""
  bounds = [max(0, int(t) - n) for t, n in zip(min_shape, image.shape)]
  paddings = [(b // 2, b - b // 2) for b in bounds]
  return np.pad(image, paddings, mode="edge"), np.pad(label, paddings, mode="edge")


def preprocess_case(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], *,
                    min_shape: Sequence[int] = TARGET_SHAPE) -> tuple[np.ndarray, np.ndarray]:
  """Resample, normalise, pad: the reference's `preprocess_case` + `pad_to_min_shape`.

  Returns:
    `(image float32 (D', H', W'), label uint8 (D', H', W'))`.
  """
  image, label = resample(image, label, spacing)
  image = normalize_intensity(image)
  image, label = pad_to_min_shape(image, label, min_shape)
  return image.astype(np.float32), label.astype(np.uint8)
