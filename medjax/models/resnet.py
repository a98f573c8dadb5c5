"""ResNet (He, Zhang, Ren & Sun 2016, "Deep Residual Learning for Image
Recognition", CVPR) in 2D or 3D, usable as a classifier or as a backbone.

The layout follows torchvision's `resnet18/34/50` ("ResNet v1.5": the stride
of a bottleneck block is on its 3x3 conv), so parameter counts match
torchvision's (ResNet-18 with 3 input channels and 1000 classes: 11,689,512):

| stage  | output stride | ResNet-18 / 34 (basic: 3x3, 3x3) | ResNet-50 (bottleneck: 1x1, 3x3, 1x1 x4) |
|--------|--------------:|----------------------------------|------------------------------------------|
| stem   | 4             | 7x7/2 conv 64, BN, ReLU, 3x3/2 max pool                                     |
| stage1 | 4             | 64 x 2 / x 3                     | 64->256 x 3                              |
| stage2 | 8             | 128 x 2 / x 4                    | 128->512 x 4                             |
| stage3 | 16            | 256 x 2 / x 6                    | 256->1024 x 6                            |
| stage4 | 32            | 512 x 2 / x 3                    | 512->2048 x 3                            |
| head   |               | global average pool, dense to num_classes                                   |

Convolutions have no bias (BatchNorm with scale and bias follows each);
a block whose stride or width changes gets a 1x1 strided projection + BN on
its shortcut. Padding: `padding="same"` (the default) is XLA's "SAME",
which for a stride-2 conv on an even input size pads one more pixel at the
end than at the start; `padding="torch"` pads every strided conv
symmetrically by `kernel // 2` as torchvision does (7x7/2 stem: 3; 3x3/2
convs: 1; 1x1/2 shortcuts: 0), by an explicit `jnp.pad` followed by a
"VALID" conv (so the same conv implementations, Pallas included, serve both;
stride-1 convs stay "SAME", which is already symmetric for odd kernels). The
option changes no shape or parameter, only the sampling grid: use "torch"
with weights imported by `medjax.weights.torchvision`, with which a
ResNet reproduces torchvision's logits (tests/test_weights_torchvision.py).
BatchNorm matches torchvision's in evaluation: epsilon 1e-5, and flax's
momentum 0.9 is torch's momentum 0.1 (`new = 0.9 old + 0.1 batch`); in
training flax updates the running variance with the biased batch variance,
torch with the unbiased one. No pretrained weights ship with medjax (no
network at run time); import your own (`medjax.weights`).

For deep features (Azizpour et al. 2016) see `medjax.features.extract`, which
pools the output of a named stage ("stem", "stage1".."stage4"); the same
activations come back from `__call__(..., return_features=True)`.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import layers


class _ConvNorm(nn.Module):
  """conv (no bias) -> norm (-> ReLU)."""
  features: int
  kernel_size: int
  strides: int = 1
  relu: bool = True
  spatial_dims: int = 2
  norm: Optional[str] = "batch"
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  padding: str = "same"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    padding = "SAME"
    if self.padding == "torch" and self.strides != 1:
      x = _pad_symmetric(x, self.kernel_size // 2)
      padding = "VALID"
    return layers.conv_norm_act(x, self.features, self.kernel_size, train=train,
                                norm=self.norm, bn_axis_name=self.bn_axis_name,
                                relu=self.relu, conv_name="conv", norm_name="norm",
                                spatial_dims=self.spatial_dims, strides=self.strides,
                                padding=padding, kernels=self.kernels)


def _pad_symmetric(x: jax.Array, pad: int) -> jax.Array:
  """Zero-pads every spatial dim of `(N, *S, C)` by `pad` at both ends (torch's `padding=pad`)."""
  if pad == 0:
    return x
  return jnp.pad(x, ((0, 0),) + ((pad, pad),) * (x.ndim - 2) + ((0, 0),))


class BasicBlock(nn.Module):
  """Two 3x3 conv-norm units with an identity (or 1x1 projection) shortcut."""
  features: int
  strides: int = 1
  spatial_dims: int = 2
  norm: Optional[str] = "batch"
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  padding: str = "same"
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    cn = functools.partial(_ConvNorm, spatial_dims=self.spatial_dims, norm=self.norm,
                           kernels=self.kernels, bn_axis_name=self.bn_axis_name,
                           padding=self.padding)
    y = cn(self.features, 3, self.strides, name="unit0")(x, train=train)
    y = cn(self.features, 3, 1, relu=False, name="unit1")(y, train=train)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = cn(self.features, 1, self.strides, relu=False, name="shortcut")(x, train=train)
    return jax.nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand x4, with a projection shortcut when needed."""
  features: int
  strides: int = 1
  spatial_dims: int = 2
  norm: Optional[str] = "batch"
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  padding: str = "same"
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    cn = functools.partial(_ConvNorm, spatial_dims=self.spatial_dims, norm=self.norm,
                           kernels=self.kernels, bn_axis_name=self.bn_axis_name,
                           padding=self.padding)
    out = self.features * self.expansion
    y = cn(self.features, 1, 1, name="unit0")(x, train=train)
    y = cn(self.features, 3, self.strides, name="unit1")(y, train=train)
    y = cn(out, 1, 1, relu=False, name="unit2")(y, train=train)
    if self.strides != 1 or x.shape[-1] != out:
      x = cn(out, 1, self.strides, relu=False, name="shortcut")(x, train=train)
    return jax.nn.relu(y + x)


class ResNetStage(nn.Module):
  """`num_blocks` residual blocks; the first one carries the stride."""
  block: Any
  features: int
  num_blocks: int
  strides: int
  spatial_dims: int = 2
  norm: Optional[str] = "batch"
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  padding: str = "same"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = self.block(self.features, self.strides if i == 0 else 1,
                     spatial_dims=self.spatial_dims, norm=self.norm, kernels=self.kernels,
                     bn_axis_name=self.bn_axis_name, padding=self.padding,
                     name=f"block{i}")(x, train=train)
    return x


class _Stem(nn.Module):
  width: int = 64
  kernel_size: int = 7
  pool: bool = True
  spatial_dims: int = 2
  norm: Optional[str] = "batch"
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  padding: str = "same"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _ConvNorm(self.width, self.kernel_size, 2, spatial_dims=self.spatial_dims,
                  norm=self.norm, kernels=self.kernels, bn_axis_name=self.bn_axis_name,
                  padding=self.padding, name="unit")(x, train=train)
    if self.pool:
      nd = self.spatial_dims
      x = nn.max_pool(x, (3,) * nd, strides=(2,) * nd, padding=((1, 1),) * nd)
    return x


class ResNet(nn.Module):
  """ResNet for `(N, *S, C)` inputs -> `(N, num_classes)` logits.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    num_classes: classes K; None drops the head and returns the pooled
      features `(N, F)` instead of logits (backbone use).
    spatial_dims: 2 (images) or 3 (volumes).
    block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50 and deeper).
    width: channels of the stem and of stage1 (doubling per stage).
    stem_kernel, stem_pool: 7 and True as in the paper; 3 and False suit
      small images (e.g. 32x32 patches).
    norm: "batch" (synchronised over `bn_axis_name`), "instance" or None.
    dropout: dropout rate before the head (0 disables).
    kernels: "auto" | "xla" | "pallas" convolution implementation.
    padding: "same" (XLA's SAME) or "torch" (symmetric `kernel // 2` padding of
      the strided convs, as torchvision; see the module docstring).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_classes: Optional[int] = 1000
  spatial_dims: int = 2
  block: str = "basic"
  width: int = 64
  stem_kernel: int = 7
  stem_pool: bool = True
  norm: Optional[str] = "batch"
  dropout: float = 0.0
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  padding: str = "same"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    """Returns logits `(N, K)`; with `return_features=True`, `(logits, feats)` where
    `feats` maps "stem", "stage1".. to `(N, *S_i, C_i)` activations and "pooled"
    to the `(N, F)` global-average-pooled last stage."""
    nd = self.spatial_dims
    if x.ndim != nd + 2:
      raise ValueError(f"ResNet(spatial_dims={nd}) expects (N, *S, C) inputs, got {x.shape}")
    blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
    if self.block not in blocks:
      raise ValueError(f"block={self.block!r}: expected 'basic' or 'bottleneck'")
    if self.padding not in ("same", "torch"):
      raise ValueError(f"padding={self.padding!r}: expected 'same' or 'torch'")
    common = dict(spatial_dims=nd, norm=self.norm, kernels=self.kernels,
                  bn_axis_name=self.bn_axis_name, padding=self.padding)
    feats = {}
    x = _Stem(self.width, self.stem_kernel, self.stem_pool, name="stem", **common)(x, train=train)
    feats["stem"] = x
    for i, n in enumerate(self.stage_sizes):
      x = ResNetStage(blocks[self.block], self.width * 2 ** i, n, 1 if i == 0 else 2,
                      name=f"stage{i + 1}", **common)(x, train=train)
      feats[f"stage{i + 1}"] = x
    pooled = jnp.mean(x, axis=tuple(range(1, nd + 1)))
    feats["pooled"] = pooled
    out = pooled
    if self.num_classes:
      if self.dropout > 0:
        out = nn.Dropout(self.dropout, deterministic=not train)(out)
      out = nn.Dense(self.num_classes, name="head")(out)
    return (out, feats) if return_features else out


def ResNet18(**kw) -> ResNet:
  """He 2016 ResNet-18: basic blocks (2, 2, 2, 2)."""
  return ResNet(stage_sizes=(2, 2, 2, 2), block="basic", **kw)


def ResNet34(**kw) -> ResNet:
  """He 2016 ResNet-34: basic blocks (3, 4, 6, 3)."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block="basic", **kw)


def ResNet50(**kw) -> ResNet:
  """He 2016 ResNet-50: bottleneck blocks (3, 4, 6, 3)."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block="bottleneck", **kw)
