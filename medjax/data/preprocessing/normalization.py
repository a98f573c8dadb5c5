"""Per-channel intensity normalisation schemes of nnU-Net (Isensee et al., Nature Methods 2021).

A plan holds one spec per channel (`planning.normalization_spec` makes them
from the channel name and the dataset fingerprint):

* `{"scheme": "ct", "clip": [lo, hi], "mean": m, "std": s}`: clip to the
  dataset's foreground 0.5 / 99.5 percentiles, then z-score with the
  dataset's foreground mean and std (the same numbers for every case, so HU
  keep their meaning).
* `{"scheme": "zscore", "use_nonzero_mask": bool}`: per-image z-score (MR and
  any modality without a physical unit). With `use_nonzero_mask` (nnU-Net
  turns it on when cropping to the non-zero region removed more than a
  quarter of the median volume, i.e. the scan has a large zero background,
  e.g. skull-stripped brain MR) the mean and std are those of the non-zero
  region only and the voxels outside it stay 0; otherwise of the whole
  (cropped) image.
* `{"scheme": "none"}`: values unchanged (float32).
* `{"scheme": "rescale_to_0_1"}`: per-image min-max to [0, 1];
  `{"scheme": "rgb_to_0_1"}`: divide by 255 (nnU-Net's two other schemes).

Channel names map case-insensitively: "CT" -> ct; "noNorm" / "none" -> none;
"rescale_to_0_1", "rgb_to_0_1" -> themselves; anything else ("T1", "FLAIR",
"MRI", "zscore", ...) -> zscore.

Statistics are accumulated in float64 over slabs, so a 512x512x600 volume
needs no float64 copy.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from medjax.errors import InputError

SCHEMES = ("ct", "zscore", "none", "rescale_to_0_1", "rgb_to_0_1")
_SLAB = 1 << 22


def scheme_for(channel_name: str) -> str:
  """The normalisation scheme of a channel name (case-insensitive), as nnU-Net maps them."""
  name = str(channel_name).strip().lower()
  if name == "ct":
    return "ct"
  if name in ("nonorm", "none"):
    return "none"
  if name in ("rescale_to_0_1", "rgb_to_0_1"):
    return name
  return "zscore"


def _slabs(n: int, per_row: int):
  rows = max(1, _SLAB // max(per_row, 1))
  for start in range(0, n, rows):
    yield slice(start, min(start + rows, n))


def mean_std(image: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[float, float]:
  """Mean and (population) std of `image` (over `mask` when given), float64 sums over slabs."""
  count, total, total_sq = 0, 0.0, 0.0
  per_row = int(np.prod(image.shape[1:])) if image.ndim > 1 else 1
  for rows in _slabs(image.shape[0], per_row):
    values = image[rows].astype(np.float64)
    if mask is not None:
      values = values[mask[rows]]
    count += values.size
    total += float(values.sum())
  if count == 0:
    return 0.0, 1.0
  mean = total / count
  for rows in _slabs(image.shape[0], per_row):
    values = image[rows].astype(np.float64)
    if mask is not None:
      values = values[mask[rows]]
    total_sq += float(np.square(values - mean).sum())
  return mean, float(np.sqrt(total_sq / count))


def normalize_channel(image: np.ndarray, spec: dict[str, Any],
                      nonzero_mask: Optional[np.ndarray] = None,
                      out: Optional[np.ndarray] = None) -> np.ndarray:
  """One channel `(*S)` normalised by `spec` (see the module docstring); float32.

  `nonzero_mask` `(*S)` bool is the non-zero region (needed when the spec
  has `use_nonzero_mask`). The result is written to `out` (a float32 array
  or view of shape `S`) when given, else to a new array.
  """
  scheme = spec.get("scheme")
  if scheme not in SCHEMES:
    raise InputError(f"plan normalization: unknown scheme {scheme!r}; expected one of {SCHEMES}")
  if out is None:
    out = np.empty(image.shape, np.float32)
  per_row = int(np.prod(image.shape[1:])) if image.ndim > 1 else 1
  if scheme == "ct":
    lo, hi = (float(v) for v in spec["clip"])
    mean, std = float(spec["mean"]), max(float(spec["std"]), 1e-8)
    for rows in _slabs(image.shape[0], per_row):
      np.clip(image[rows], lo, hi, out=out[rows], dtype=np.float32, casting="unsafe")
      out[rows] -= mean
      out[rows] /= std
    return out
  out[...] = image
  if scheme == "none":
    return out
  if scheme == "rgb_to_0_1":
    out /= 255.0
    np.clip(out, 0.0, 1.0, out=out)
    return out
  if scheme == "rescale_to_0_1":
    lo, hi = float(out.min()), float(out.max())
    out -= lo
    out /= max(hi - lo, 1e-8)
    return out
  mask = nonzero_mask if spec.get("use_nonzero_mask") else None
  if mask is not None and mask.shape != image.shape:
    raise InputError(f"normalize_channel: mask shape {mask.shape} != image shape {image.shape}")
  mean, std = mean_std(out, mask)
  std = max(std, 1e-8)
  for rows in _slabs(image.shape[0], per_row):
    slab = out[rows]
    if mask is None:
      slab -= mean
      slab /= std
    else:
      inside = mask[rows]
      slab[inside] = (slab[inside] - mean) / std
      slab[~inside] = 0.0
  return out
