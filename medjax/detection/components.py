"""Detections from a segmentation: connected components as scored boxes.

nnDetection's baseline "U-Net + connected components" (Baumgartner et al.
2021): a semantic segmentation network's label map is split into connected
components (26-neighbourhood in 3D, 8 in 2D, `scipy.ndimage.label`), each
component of class c becomes one box (its voxel extent, half-open, as
`boxes.boxes_from_instances`) with the score = the highest probability of
class c inside the component.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from medjax.detection import boxes as box_ops


def component_detections(labels: np.ndarray, probabilities: np.ndarray, *,
                         min_voxels: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Boxes of the connected components of every foreground class.

  Args:
    labels: `(*S)` integer class map (0 background).
    probabilities: `(*S, K)` class probabilities (K includes the background).
    min_voxels: components with fewer voxels are dropped.
  Returns:
    `(boxes (D, 2n) float32, scores (D,), classes (D,) 0-based foreground class)` by
    decreasing score.
  """
  labels = np.asarray(labels)
  probabilities = np.asarray(probabilities)
  if probabilities.shape[:-1] != labels.shape:
    raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape}: expected "
                     "(*S) and (*S, K)")
  structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
  out_boxes, out_scores, out_classes = [], [], []
  for c in range(1, probabilities.shape[-1]):
    components, count = ndimage.label(labels == c, structure=structure)
    if not count:
      continue
    boxes, ids = box_ops.boxes_from_instances(components)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[ids]
    best = ndimage.maximum(probabilities[..., c], components, ids)
    keep = sizes >= min_voxels
    out_boxes.append(boxes[keep])
    out_scores.append(np.asarray(best, np.float64).reshape(-1)[keep])
    out_classes.append(np.full(int(keep.sum()), c - 1, np.int64))
  if not out_boxes:
    n2 = 2 * labels.ndim
    return np.zeros((0, n2), np.float32), np.zeros(0), np.zeros(0, np.int64)
  boxes, scores, classes = (np.concatenate(out_boxes), np.concatenate(out_scores),
                            np.concatenate(out_classes))
  order = np.argsort(-scores, kind="stable")
  return boxes[order].astype(np.float32), scores[order], classes[order]
