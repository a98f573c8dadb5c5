"""Dataset fingerprint, as nnU-Net's (Isensee et al., Nature Methods 2021, `DatasetFingerprintExtractor`).

`case_fingerprint` reads one case (so a builder streams the dataset, one case
in RAM at a time): its shape and spacing, its shape after cropping to the
non-zero region of all channels, and per channel up to `SAMPLES_PER_CASE`
foreground (label > 0) intensities drawn with replacement (nnU-Net draws a
fixed number per case too), with their min / max. `dataset_fingerprint`
combines them: median spacing and median shape after crop, and per channel
the foreground mean / std / median / 0.5 and 99.5 percentiles of the pooled
samples (what CT normalisation uses). Everything is JSON-able.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from medjax.data.pipeline import crop
from medjax.errors import InputError

SAMPLES_PER_CASE = 10000


def nonzero_mask(image: np.ndarray) -> np.ndarray:
  """`(*S)` bool: voxels where any channel of `image` `(*S, C)` is non-zero."""
  mask = image[..., 0] != 0
  for c in range(1, image.shape[-1]):
    mask |= image[..., c] != 0
  return mask


def nonzero_box(image: np.ndarray) -> tuple[slice, ...]:
  """Bounding box (one slice per spatial axis) of the non-zero region of `image`
  `(*S, C)`, nnU-Net's crop; the whole array when every voxel is zero."""
  box = crop.organ_bbox(nonzero_mask(image))
  return box if box is not None else tuple(slice(0, n) for n in image.shape[:-1])


def check_case(image: np.ndarray, label: Optional[np.ndarray], spacing: Sequence[float],
               name: str = "case") -> None:
  """InputError naming `name` unless image `(*S, C)`, label `(*S)` and spacing agree."""
  if image.ndim < 2:
    raise InputError(f"{name}: image must be (*spatial, channels), got shape {image.shape}")
  spatial = image.shape[:-1]
  if len(spacing) != len(spatial):
    raise InputError(f"{name}: spacing {tuple(spacing)} has {len(spacing)} entries for an image "
                     f"of spatial shape {spatial}")
  if any(not np.isfinite(s) or s <= 0 for s in spacing):
    raise InputError(f"{name}: spacing {tuple(spacing)} must be positive and finite")
  if label is not None and label.shape != spatial:
    raise InputError(f"{name}: label shape {label.shape} != image spatial shape {spatial}")


def case_fingerprint(image: np.ndarray, label: Optional[np.ndarray], spacing: Sequence[float],
                     *, seed: int = 0, name: str = "case") -> dict[str, Any]:
  """Fingerprint of one case.

  Args:
    image: `(*S, C)`.
    label: `(*S)` integer, or None (then the samples come from the whole
      non-zero box instead of the foreground).
    spacing: mm per spatial axis.
    seed: of the intensity sampling.
    name: names the case in an `InputError` (shapes or spacing that disagree).

  Returns:
    `{"shape", "spacing", "shape_after_crop", "relative_size_after_crop",
    "num_foreground_voxels", "foreground_samples": [[float] per channel],
    "foreground_min": [...], "foreground_max": [...]}` (min / max None for a
    channel without foreground).
  """
  image = np.asarray(image)
  check_case(image, label, spacing, name)
  box = nonzero_box(image)
  shape_after_crop = [s.stop - s.start for s in box]
  cropped = image[box]
  rng = np.random.default_rng(seed)
  spatial_crop = cropped.shape[:-1]
  if label is None:  # no labels: a uniform sample of the box, min / max over the box
    foreground = None
    count = int(np.prod(spatial_crop))
    flat = np.sort(rng.integers(0, count, min(SAMPLES_PER_CASE, count)))
  else:  # nnU-Net: a fixed number of foreground voxels, drawn with replacement
    foreground = np.asarray(label)[box] > 0
    flat = np.flatnonzero(foreground)
    count = int(flat.size)
    if count:
      flat = np.sort(rng.choice(flat, SAMPLES_PER_CASE, replace=True))
  index = np.unravel_index(flat, spatial_crop)
  samples, lows, highs = [], [], []
  for c in range(image.shape[-1]):
    channel = cropped[..., c]
    values = channel if foreground is None else channel[foreground]
    lows.append(float(values.min()) if count else None)
    highs.append(float(values.max()) if count else None)
    samples.append(channel[index].astype(float).tolist())
  spatial = image.shape[:-1]
  return {
      "shape": [int(n) for n in spatial],
      "spacing": [float(s) for s in spacing],
      "shape_after_crop": shape_after_crop,
      "relative_size_after_crop": float(np.prod(shape_after_crop) / max(np.prod(spatial), 1)),
      "num_foreground_voxels": count,
      "foreground_samples": samples,
      "foreground_min": lows,
      "foreground_max": highs,
  }


def dataset_fingerprint(case_fingerprints: Sequence[dict], channel_names: Sequence[str]
                        ) -> dict[str, Any]:
  """Combines case fingerprints (the raw samples are dropped).

  Returns:
    `{"channel_names", "num_cases", "spacings": [[...] per case],
    "shapes_after_crop": [[...] per case], "median_spacing",
    "median_shape" (after crop), "median_relative_size_after_crop",
    "intensity": [{"mean", "std", "median", "min", "max", "percentile_00_5",
    "percentile_99_5", "num_samples"} per channel]}` (values None for a
    channel without any foreground sample).
  """
  if not case_fingerprints:
    raise InputError("dataset fingerprint: no cases")
  channels = len(channel_names)
  for i, case in enumerate(case_fingerprints):
    if len(case["foreground_samples"]) != channels:
      raise InputError(f"dataset fingerprint: case {i} has {len(case['foreground_samples'])} "
                       f"channels, channel_names has {channels}")
    if len(case["spacing"]) != len(case_fingerprints[0]["spacing"]):
      raise InputError(f"dataset fingerprint: case {i} is {len(case['spacing'])}D, case 0 is "
                       f"{len(case_fingerprints[0]['spacing'])}D")
  spacings = np.array([c["spacing"] for c in case_fingerprints], np.float64)
  shapes = np.array([c["shape_after_crop"] for c in case_fingerprints], np.float64)
  intensity = []
  for c in range(channels):
    values = np.concatenate([np.asarray(case["foreground_samples"][c], np.float64)
                             for case in case_fingerprints])
    if values.size == 0:
      intensity.append({k: None for k in ("mean", "std", "median", "min", "max",
                                          "percentile_00_5", "percentile_99_5")})
      intensity[-1]["num_samples"] = 0
      continue
    lo, median, hi = np.percentile(values, [0.5, 50.0, 99.5])
    intensity.append({"mean": float(values.mean()), "std": float(values.std()),
                      "median": float(median), "min": float(values.min()),
                      "max": float(values.max()), "percentile_00_5": float(lo),
                      "percentile_99_5": float(hi), "num_samples": int(values.size)})
  return {
      "channel_names": [str(n) for n in channel_names],
      "num_cases": len(case_fingerprints),
      "spacings": spacings.tolist(),
      "shapes_after_crop": shapes.astype(int).tolist(),
      "median_spacing": np.median(spacings, axis=0).tolist(),
      "median_shape": np.median(shapes, axis=0).tolist(),
      "median_relative_size_after_crop": float(np.median(
          [c["relative_size_after_crop"] for c in case_fingerprints])),
      "intensity": intensity,
  }
