"""Whole-image inference: sliding windows with test-time mirroring, and the cascade.

* `sliding_window`: a network trained on patches predicts a large volume
  window by window; the overlapping window predictions are averaged with a
  constant or a Gaussian importance weight (nnU-Net, Isensee et al. 2021:
  sigma = 1/8 of the window, which down-weights the less reliable borders).
* `WindowPredictor`: one trained network as a function of a raw image
  (normalise, slide, blend), the unit evaluation and prediction share.
* `cascade_predict`: the one implementation of the organ -> lesion rule of
  cascaded FCNs (Christ et al. 2016), used by evaluation, by
  `experiments.predict` and by the tests.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Optional, Sequence, Union

import numpy as np
import scipy.ndimage

from medjax.data.crop import crop_to_bbox, organ_bbox, paste_from_bbox

PredictFn = Callable[[np.ndarray], np.ndarray]


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
  """Start offsets of windows of length `roi` covering `size` with the given overlap."""
  if size <= roi:
    return [0]
  step = max(int(roi * (1.0 - overlap)), 1)
  n = int(np.ceil((size - roi) / step)) + 1
  return [int(round(x)) for x in np.linspace(0, size - roi, n)]


def importance_map(roi_size: Sequence[int], mode: str, sigma_scale: float = 0.125) -> np.ndarray:
  """Per-voxel weight of a window: ones ("constant") or a Gaussian bump ("gaussian")."""
  if mode == "constant":
    return np.ones(roi_size, np.float32)
  if mode != "gaussian":
    raise ValueError(f"mode={mode!r}: expected 'gaussian' or 'constant'")
  impulse = np.zeros(roi_size, np.float32)
  impulse[tuple(s // 2 for s in roi_size)] = 1.0
  g = scipy.ndimage.gaussian_filter(impulse, [s * sigma_scale for s in roi_size], mode="constant")
  g = g / g.max()
  return np.maximum(g, g[g > 0].min()).astype(np.float32)  # no zero weights at the borders


def _mirrored(predict_fn: PredictFn, x: np.ndarray, mirror_axes: Sequence[int]) -> np.ndarray:
  """Mean prediction over every combination of flips of `mirror_axes` (spatial axes)."""
  out = None
  combos = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)]
  for axes in combos:
    ax = tuple(a + 1 for a in axes)
    y = np.asarray(predict_fn(np.flip(x, ax) if ax else x))
    y = np.flip(y, ax) if ax else y
    out = y if out is None else out + y
  return out / len(combos)


def sliding_window(predict_fn: PredictFn, volume: np.ndarray, roi_size: Sequence[int], *,
                   overlap: float = 0.5, mode: str = "gaussian", batch_size: int = 4,
                   mirror_axes: Sequence[int] = ()) -> np.ndarray:
  """Predicts a whole image window by window and blends the windows.

  Args:
    predict_fn: maps windows `(B, *roi_size, C)` to `(B, *roi_size, K)`
      (e.g. softmax probabilities). It is always called with exactly
      `batch_size` windows (the last batch is padded), so a jitted function
      compiles once.
    volume: `(N, *S, C)`; a spatial dim smaller than the window is padded
      with the volume's minimum and cropped back.
    roi_size: window size, one per spatial dim.
    overlap: fraction of a window shared with its neighbour, in [0, 1).
    mode: "gaussian" or "constant" blending weights.
    mirror_axes: spatial axes (0-based) to flip for test-time augmentation.
  Returns:
    `(N, *S, K)` float32 blended predictions.
  """
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f"overlap={overlap}: expected a value in [0, 1)")
  volume = np.asarray(volume)
  spatial = volume.shape[1:-1]
  roi_size = tuple(int(r) for r in roi_size)
  if len(roi_size) != len(spatial):
    raise ValueError(f"roi_size {roi_size} does not match the spatial dims {spatial}")
  if min(roi_size) < 1:
    raise ValueError(f"roi_size {roi_size}: expected positive window sizes")
  if int(batch_size) < 1:
    raise ValueError(f"batch_size={batch_size}: expected a positive number of windows")
  bad = [a for a in mirror_axes if not 0 <= a < len(spatial)]
  if bad:
    raise ValueError(f"mirror_axes={tuple(mirror_axes)}: expected spatial axes in "
                     f"[0, {len(spatial)})")
  pads = [(0, max(r - s, 0)) for r, s in zip(roi_size, spatial)]
  if any(p[1] for p in pads):
    volume = np.pad(volume, [(0, 0)] + pads + [(0, 0)], constant_values=volume.min())
  padded = volume.shape[1:-1]
  weight = importance_map(roi_size, mode)
  starts = list(itertools.product(*[window_starts(s, r, overlap) for s, r in zip(padded, roi_size)]))
  outputs = []
  for image in volume:
    acc = count = None
    for b in range(0, len(starts), batch_size):
      chunk = starts[b:b + batch_size]
      windows = np.stack([image[tuple(slice(s, s + r) for s, r in zip(st, roi_size))]
                          for st in chunk])
      if len(chunk) < batch_size:
        windows = np.concatenate(
            [windows, np.repeat(windows[-1:], batch_size - len(chunk), axis=0)])
      preds = _mirrored(predict_fn, windows, mirror_axes)
      if acc is None:
        acc = np.zeros(padded + (preds.shape[-1],), np.float32)
        count = np.zeros(padded + (1,), np.float32)
      for st, p in zip(chunk, preds):
        sl = tuple(slice(s, s + r) for s, r in zip(st, roi_size))
        acc[sl] += p * weight[..., None]
        count[sl] += weight[..., None]
    out = acc / count
    outputs.append(out[tuple(slice(0, s) for s in spatial)])
  return np.stack(outputs)


ImageFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class WindowPredictor:
  """One trained network applied to whole raw images: normalise, slide windows, blend.

  Attributes:
    predict_fn: windows `(B, *roi_size, C)` -> probabilities `(B, *roi_size, K)`.
    roi_size: the window (the training patch size).
    overlap, mode, batch_size, mirror_axes: as in `sliding_window`.
    normalize: raw image `(*S, C)` -> network input `(*S, C)`, applied to
      whatever image the predictor is given (for a cascade's second stage:
      the organ crop, normalised with its own statistics as in training);
      None: the image is used as it is.
  """
  predict_fn: PredictFn
  roi_size: tuple
  overlap: float = 0.5
  mode: str = "gaussian"
  batch_size: int = 4
  mirror_axes: tuple = ()
  normalize: Optional[ImageFn] = None

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """Probabilities `(*S, K)` float32 of one image `(*S, C)`."""
    x = np.asarray(image if self.normalize is None else self.normalize(image), np.float32)
    return sliding_window(self.predict_fn, x[None], self.roi_size, overlap=self.overlap,
                          mode=self.mode, batch_size=self.batch_size,
                          mirror_axes=self.mirror_axes)[0]


def foreground_probability(probs: np.ndarray) -> np.ndarray:
  """`P(label > 0)` `(*S,)` from class probabilities `(*S, K)`."""
  return 1.0 - probs[..., 0]


def cascade_predict(organ_fn: ImageFn, lesion_fn: ImageFn, image: np.ndarray, *,
                    margin: Union[int, Sequence[int]], organ_label: int = 1,
                    lesion_label: int = 2, probabilities: bool = False):
  """Joint organ + lesion labels of one image with cascaded FCNs (Christ et al. 2016).

  Stage 1 (`organ_fn`) segments the organ in the whole image (organ =
  argmax > 0); stage 2 (`lesion_fn`) segments the lesion in the image cropped
  to the stage-1 organ box grown by `margin` voxels; lesion voxels outside the
  stage-1 organ mask are removed. The joint map has the classes of a
  single-stage network (0 background, `organ_label`, `lesion_label`), so both
  are scored alike.

  Args:
    organ_fn: raw image `(*S, C)` -> probabilities `(*S, K1)` (e.g. a
      `WindowPredictor`: it normalises what it is given).
    lesion_fn: raw crop `(*B, C)` -> probabilities `(*B, K2)`.
    image: `(*S, C)` one raw image (no batch axis).
    margin: voxels added on each side of the organ box (an int or per axis).
    probabilities: also return joint probabilities `(*S, 3)` float32:
      background `1 - P(organ)`, organ `P(organ) (1 - P(lesion | box))`,
      lesion `P(organ) P(lesion | box)` (0 outside the box), with
      `P(organ)` and `P(lesion | box)` the stages' foreground probabilities.
  Returns:
    `(*S,)` uint8 labels, and the probabilities when asked for.
  """
  image = np.asarray(image)
  spatial = image.shape[:-1]
  p1 = np.asarray(organ_fn(image))
  if p1.shape[:-1] != spatial:
    raise ValueError(f"organ_fn returned {p1.shape} for an image of spatial shape {spatial}")
  organ = p1.argmax(-1) > 0
  labels = np.where(organ, organ_label, 0).astype(np.uint8)
  p_organ = foreground_probability(p1)
  p_lesion = np.zeros(spatial, np.float32)
  bbox = organ_bbox(organ, margin)
  if bbox is not None:
    p2 = np.asarray(lesion_fn(crop_to_bbox(image, bbox)))
    lesion = paste_from_bbox(p2.argmax(-1) > 0, bbox, spatial, fill=False) & organ
    labels[lesion] = lesion_label
    p_lesion = paste_from_bbox(foreground_probability(p2).astype(np.float32), bbox, spatial)
  if not probabilities:
    return labels
  joint = np.stack([1.0 - p_organ, p_organ * (1.0 - p_lesion), p_organ * p_lesion], axis=-1)
  return labels, joint.astype(np.float32)
