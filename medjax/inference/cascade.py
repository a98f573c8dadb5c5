"""Cascaded FCNs at inference (Christ et al. 2016): organ first, then the lesion in the organ box.

`cascade_predict` is the one implementation of the organ -> lesion rule, used
by evaluation, by `experiments.predict` and by the tests.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from medjax.data.pipeline.crop import crop_to_bbox, organ_bbox, paste_from_bbox
from medjax.inference.windows import ImageFn


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
