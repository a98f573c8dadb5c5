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
  `crop_to_bbox(image, bbox)` (`medjax.data.pipeline.crop`), with lesion labels (`lesion_logits`), so that
  it learns to tolerate stage-1 boxes that are a little too large or small.
* Inference: `medjax.inference.cascade_predict(organ_fn, lesion_fn, image,
  margin=...)`, the one implementation of the rule, with e.g. `organ_fn` a
  `medjax.inference.WindowPredictor` over
  `lambda x: model.apply(v, x, method=model.organ_logits)`.

The experiment launcher trains a cascade as two ordinary segmentation runs
(`medjax.train.cascade`), not as this module; `CascadedFCN` is the pair of
networks as one Flax module, for code that wants both in one parameter tree.
Christ et al. also refine with a 3D dense CRF; that post-processing is not
part of medjax. The crop helpers are in `medjax.data.pipeline.crop`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from medjax.models.unet import UNet


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
