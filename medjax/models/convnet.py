"""Convolutional classifiers: LeNet (LeCun et al. 1989, 1998) and VGG
(Simonyan & Zisserman 2015).

`variant="lenet"` (LeNet-5, LeCun et al. 1998, "Gradient-based learning
applied to document recognition"), on a 32x32 single-channel input:

| layer | operation                 | output     | params |
|-------|---------------------------|------------|-------:|
| C1    | 5x5 conv, 6, valid        | 28x28x6    |    156 |
| S2    | 2x2 pool                  | 14x14x6    |      0 |
| C3    | 5x5 conv, 16, valid       | 10x10x16   |  2,416 |
| S4    | 2x2 pool                  | 5x5x16     |      0 |
| F5    | dense 120                 | 120        | 48,120 |
| F6    | dense 84                  | 84         | 10,164 |
| out   | dense K (10)              | 10         |    850 |
|       |                           | total      | 61,706 |

Modern defaults: ReLU and max pooling instead of the scaled tanh and the
trainable average subsampling of 1998, and C3 connected to all 6 S2 maps (the
paper's sparse connection table is a 1998 compute saving). Other input sizes
work (the flatten adapts), e.g. 28x28 -> 4x4x16 before F5.

`variant="vgg"` (Simonyan & Zisserman 2015, "Very deep convolutional networks
for large-scale image recognition"): blocks of 3x3 "same" convs + ReLU
(+ optional BatchNorm) each followed by 2x2 max pooling, then dense layers
with dropout and the classifier. `vgg_blocks=((c, n), ...)` gives channels and
convs per block; the default is a small medical-image VGG
((32, 2), (64, 2), (128, 3), (256, 3)) with one 256-wide dense layer;
`ConvNet.vgg16()` is configuration D of the paper (13 convs 64..512, two 4096
dense layers; 138,357,544 parameters at 224x224x3 and 1000 classes).

`adaptive_pool=(7, 7)` averages the last feature map onto a fixed grid
before the flatten, as torchvision's VGG (`AdaptiveAvgPool2d((7, 7))`: bin
`i` of an axis of length `L` averages `[floor(i L / 7), ceil((i + 1) L / 7))`,
so a 1x1 map is copied into every bin); at 224x224 the map is already 7x7 and
the pooling is the identity. With it and torchvision-layout weights
(`medjax.weights.torchvision.vgg_variables`) `ConvNet.vgg16(adaptive_pool=(7, 7))`
reproduces torchvision's `vgg16` at any input size >= 32.

`global_pool="max"` (or "avg") replaces the flatten before the dense layers by
a global pooling over space (Lin et al. 2014, "Network in network"; the max is
the multiple-instance view of "is there a lesion anywhere in this image?",
e.g. Oquab et al. 2015). The dense layers then see `channels` features
whatever the input size, instead of one weight per position: far fewer
parameters and translation invariance, which a small medical training set
needs (see `experiments/configs/convnet_synthetic2d.py`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax import layers
from medjax.models.vgg import vgg_encoder


class ConvNet(nn.Module):
  """Conv + ReLU + pooling classifier `(N, *S, C) -> (N, num_classes)` logits.

  Attributes:
    variant: "lenet" or "vgg".
    num_classes: K.
    spatial_dims: 2 (images; the papers) or 3.
    lenet_features: channels of C1 and C3.
    vgg_blocks: ((channels, convs), ...) per VGG block.
    dense: widths of the dense layers before the classifier (None: 120, 84 for
      LeNet; 256 for VGG).
    dropout: dropout rate after each dense layer (0.5 in VGG; 0 disables).
    norm: None or "batch"/"instance" after every VGG conv (not used by LeNet).
    global_pool: None (flatten, the papers) or "max" / "avg" over space.
    adaptive_pool: None, or an output grid (one size per spatial dim) onto
      which the last feature map is average-pooled before the flatten
      (torchvision's VGG: (7, 7)); only with `global_pool=None`.
    kernels: "auto" | "xla" | "pallas" convolution implementation.
    bn_axis_name: axis over which BatchNorm statistics are synchronised.
  """
  variant: str = "lenet"
  num_classes: int = 10
  spatial_dims: int = 2
  lenet_features: Sequence[int] = (6, 16)
  vgg_blocks: Sequence[Sequence[int]] = ((32, 2), (64, 2), (128, 3), (256, 3))
  dense: Optional[Sequence[int]] = None
  dropout: float = 0.0
  norm: Optional[str] = None
  global_pool: Optional[str] = None
  adaptive_pool: Optional[Sequence[int]] = None
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None

  @classmethod
  def lenet5(cls, **overrides) -> "ConvNet":
    """LeNet-5 (LeCun 1998): 61,706 params on 32x32x1 with 10 classes."""
    kw = dict(variant="lenet", num_classes=10)
    kw.update(overrides)
    return cls(**kw)

  @classmethod
  def vgg16(cls, **overrides) -> "ConvNet":
    """VGG-16, configuration D of Simonyan & Zisserman 2015 (138,357,544 params
    at 224x224x3 with 1000 classes)."""
    kw = dict(variant="vgg", num_classes=1000,
              vgg_blocks=((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)),
              dense=(4096, 4096), dropout=0.5)
    kw.update(overrides)
    return cls(**kw)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    nd = self.spatial_dims
    if x.ndim != nd + 2:
      raise ValueError(f"ConvNet(spatial_dims={nd}) expects (N, *S, C) inputs, got {x.shape}")
    if self.variant == "lenet":
      for i, f in enumerate(self.lenet_features):
        x = layers.ConvND(f, 5, padding="VALID", spatial_dims=nd, activation="relu",
                          kernels=self.kernels, name=f"conv{i}")(x)
        x = layers.max_pool(x, nd)
      dense = (120, 84) if self.dense is None else self.dense
    elif self.variant == "vgg":
      x = vgg_encoder(x, self.vgg_blocks, train=train, norm=self.norm,
                      bn_axis_name=self.bn_axis_name, spatial_dims=nd, kernels=self.kernels)[-1]
      dense = (256,) if self.dense is None else self.dense
    else:
      raise ValueError(f"variant={self.variant!r}: expected 'lenet' or 'vgg'")
    if self.adaptive_pool is not None:
      if self.global_pool is not None:
        raise ValueError("adaptive_pool and global_pool exclude each other")
      x = adaptive_avg_pool(x, self.adaptive_pool)
    if self.global_pool is None:  # (a "None" flag is None by then: train.model_factory)
      x = x.reshape(x.shape[0], -1)
    elif self.global_pool in ("max", "avg"):
      reduce = jnp.max if self.global_pool == "max" else jnp.mean
      x = reduce(x, axis=tuple(range(1, nd + 1)))
    else:
      raise ValueError(f"global_pool={self.global_pool!r}: expected None, 'max' or 'avg'")
    for i, width in enumerate(dense):
      x = jax.nn.relu(nn.Dense(width, name=f"dense{i}")(x))
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="head")(x)


def _adaptive_weights(length: int, out: int) -> np.ndarray:
  """`(out, length)` averaging matrix of torch's adaptive average pooling:
  row `i` averages `[floor(i L / out), ceil((i + 1) L / out))`."""
  w = np.zeros((out, length), np.float32)
  for i in range(out):
    start, end = (i * length) // out, -((-(i + 1) * length) // out)
    w[i, start:end] = 1.0 / (end - start)
  return w


def adaptive_avg_pool(x: jax.Array, output_size: Sequence[int]) -> jax.Array:
  """Adaptive average pooling of `(N, *S, C)` to `(N, *output_size, C)`, bins as
  torch's `AdaptiveAvgPool{1,2,3}d` (overlapping where `S` is not a multiple)."""
  output_size = tuple(output_size)
  if len(output_size) != x.ndim - 2:
    raise ValueError(f"adaptive_pool={output_size}: expected one size per spatial dim of {x.shape}")
  for axis, out in enumerate(output_size, start=1):
    w = jnp.asarray(_adaptive_weights(x.shape[axis], out), x.dtype)
    x = jnp.moveaxis(jnp.tensordot(x, w, axes=([axis], [1])), -1, axis)
  return x
