"""Cascaded FCNs for organ and lesion segmentation (Christ et al. 2016,
"Automatic Liver and Lesion Segmentation in CT Using Cascaded Fully
Convolutional Neural Networks and 3D Conditional Random Fields", MICCAI).

Two segmentation networks run one after the other:

| stage | input                                        | output                        |
|-------|----------------------------------------------|-------------------------------|
| 1     | the whole image (optionally downsampled by `stage1_downsample`) | organ vs background |
| 2     | the image cropped to the stage-1 organ bounding box (+ margin)  | lesion vs background |
| join  | 0 background, 1 organ, 2 lesion; lesion voxels outside the stage-1 organ mask are removed |

Lesions nest inside the organ and are tiny, so stage 2 sees a region where
they are far less rare than in the whole image: that is the point of the
cascade. Both stages default to a small U-Net (features 16..128, two classes).

Intended use:
* Training (done by the trainer, not here): stage 1 on whole images with
  organ labels (`organ_logits`); stage 2 on crops from the *ground-truth*
  organ bounding box with a jittered margin, e.g.
  `bbox = organ_bbox(gt_organ, margin=rng.integers(4, 16, size=ndim))`,
  `crop_to_bbox(image, bbox)`, with lesion labels (`lesion_logits`), so that
  it learns to tolerate stage-1 boxes that are a little too large or small.
* Inference: `cascade_predict(stage1_fn, stage2_fn, image, margin=...)` with
  e.g. `stage1_fn = jax.jit(lambda x: model.apply(v, x, method=model.organ_logits))`.

Christ et al. also refine with a 3D dense CRF; that post-processing is not
part of medjax. The crop/paste helpers are host-side NumPy (box sizes vary
from case to case); the networks run under jit.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax.models.unet import UNet

BBox = tuple  # tuple of slices, one per spatial dim


def organ_bbox(mask, margin: Union[int, Sequence[int]] = 0) -> Optional[BBox]:
  """Bounding box of the non-zero voxels of `mask` `(*S,)`, grown by `margin`
  voxels on each side (an int or one per axis) and clipped to the array.

  Returns a tuple of slices, or None when the mask is empty.
  """
  mask = np.asarray(mask) != 0
  if not mask.any():
    return None
  margins = (margin,) * mask.ndim if np.isscalar(margin) else tuple(margin)
  if len(margins) != mask.ndim:
    raise ValueError(f"margin {margin} has {len(margins)} values for a {mask.ndim}-d mask")
  box = []
  for axis, (size, m) in enumerate(zip(mask.shape, margins)):
    other = tuple(a for a in range(mask.ndim) if a != axis)
    idx = np.flatnonzero(mask.any(axis=other))
    box.append(slice(max(int(idx[0]) - int(m), 0), min(int(idx[-1]) + 1 + int(m), size)))
  return tuple(box)


def crop_to_bbox(array, bbox: BBox):
  """`array[bbox]`: crops the leading `len(bbox)` (spatial) dims; trailing dims
  (channels) are kept. `(*S, ...) -> (*S_box, ...)`."""
  return array[tuple(bbox)]


def paste_from_bbox(crop, bbox: BBox, shape: Sequence[int], fill=0) -> np.ndarray:
  """Inverse of `crop_to_bbox`: an array of `shape` (the full spatial shape; the
  crop's trailing dims are appended if `shape` omits them) filled with `fill`,
  with `crop` written at `bbox`."""
  crop = np.asarray(crop)
  shape = tuple(shape)
  if len(shape) == len(bbox):
    shape = shape + crop.shape[len(bbox):]
  out = np.full(shape, fill, dtype=crop.dtype)
  out[tuple(bbox)] = crop
  return out


def _pad_to_multiple(x: np.ndarray, multiple: int, nd: int):
  pads = [(0, (-s) % multiple) for s in x.shape[:nd]] + [(0, 0)] * (x.ndim - nd)
  return np.pad(x, pads, mode="edge"), x.shape[:nd]


def cascade_predict(stage1_fn: Callable, stage2_fn: Callable, image, *,
                    margin: Union[int, Sequence[int]] = 8, multiple: int = 16,
                    organ_label: int = 1, lesion_label: int = 2) -> np.ndarray:
  """Joint organ + lesion label map of one image with the two-stage cascade.

  Args:
    stage1_fn: `(1, *S, C) -> (1, *S, K1)` organ logits (organ = argmax > 0).
    stage2_fn: `(1, *B, C) -> (1, *B, K2)` lesion logits on a crop (lesion =
      argmax > 0).
    image: `(*S, C)` one image or volume (no batch dim).
    margin: voxels added around the stage-1 organ box (int or per axis).
    multiple: the crop is edge-padded to a multiple of this before stage 2
      (a U-Net with "same" padding needs sizes divisible by 2^(levels-1)) and
      the padding is cut from its output.
  Returns:
    `(*S,)` int32 labels: 0 background, `organ_label`, `lesion_label`; lesion
    voxels outside the stage-1 organ mask are removed (set to background).
  """
  image = np.asarray(image)
  nd = image.ndim - 1
  organ = np.asarray(jnp.argmax(stage1_fn(image[None]), axis=-1))[0] > 0
  if organ.shape != image.shape[:nd]:
    raise ValueError(f"stage1_fn returned a {organ.shape} map for a {image.shape[:nd]} image")
  labels = np.where(organ, organ_label, 0).astype(np.int32)
  bbox = organ_bbox(organ, margin)
  if bbox is None:
    return labels
  crop, crop_shape = _pad_to_multiple(crop_to_bbox(image, bbox), multiple, nd)
  lesion = np.asarray(jnp.argmax(stage2_fn(crop[None]), axis=-1))[0] > 0
  lesion = lesion[tuple(slice(0, s) for s in crop_shape)]
  lesion = paste_from_bbox(lesion, bbox, image.shape[:nd], fill=False) & organ
  labels[lesion] = lesion_label
  return labels


def _resize(x: jax.Array, spatial: Sequence[int]) -> jax.Array:
  return jax.image.resize(x, (x.shape[0],) + tuple(spatial) + (x.shape[-1],), method="linear")


class CascadedFCN(nn.Module):
  """Two segmentation networks for the organ -> lesion cascade (Christ 2016).

  Attributes:
    stage1: template of the organ network (any `__call__(x, *, train)`
      segmentation module); None: `UNet(spatial_dims, (16, 32, 64, 128), 2)`.
    stage2: template of the lesion network; None: the same small U-Net.
    spatial_dims: 2 or 3 (for the default networks).
    stage1_downsample: stage 1 runs on the image downsampled by this factor
      (linear resize) and its logits are resized back to the input size.
    kernels: "auto" | "xla" | "pallas" (default networks).
    bn_axis_name: axis over which BatchNorm statistics are synchronised
      (default networks).

  Methods: `organ_logits(x, train=...)` `(N, *S, K1)`, `lesion_logits(crops,
  train=...)` `(N, *B, K2)`; `__call__` returns `{"organ": ..., "lesion": ...}`,
  both networks applied to the same input (used by `init`).
  """
  stage1: Optional[nn.Module] = None
  stage2: Optional[nn.Module] = None
  spatial_dims: int = 2
  stage1_downsample: int = 1
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None

  def setup(self):
    default = lambda: UNet(spatial_dims=self.spatial_dims, features=(16, 32, 64, 128),
                           num_classes=2, kernels=self.kernels, bn_axis_name=self.bn_axis_name)
    s1 = self.stage1 if self.stage1 is not None else default()
    s2 = self.stage2 if self.stage2 is not None else default()
    self.organ_net = s1.clone(parent=self, name="organ")
    self.lesion_net = s2.clone(parent=self, name="lesion")

  def organ_logits(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    f = self.stage1_downsample
    if f == 1:
      return self.organ_net(x, train=train)
    spatial = x.shape[1:-1]
    if any(s % f for s in spatial):
      raise ValueError(f"stage1_downsample={f} must divide the input size {spatial}")
    logits = self.organ_net(_resize(x, [s // f for s in spatial]), train=train)
    return _resize(logits, spatial)

  def lesion_logits(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    return self.lesion_net(x, train=train)

  def __call__(self, x: jax.Array, *, train: bool = False) -> dict:
    return {"organ": self.organ_logits(x, train=train),
            "lesion": self.lesion_logits(x, train=train)}
