"""U-Net (Ronneberger et al. 2015) in 2D and 3D (Cicek et al. 2016).

An encoder of double-conv levels joined by 2x max pooling, a decoder of 2x
transposed convolutions ("up-convs") whose output is concatenated with the
encoder feature map of the same level (cropped to size with "valid" padding),
and a 1x1 convolution head. `UNet.original()` is the network of the U-Net
paper; `UNet.cicek()` the 3D U-Net of Cicek 2016.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import layers


class ConvBlock(nn.Module):
  """Two (conv -> norm -> activation) units, then optional dropout."""
  features: int
  spatial_dims: int = 3
  padding: str = "same"
  norm: Optional[str] = None
  dropout: float = 0.0
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(2):
      fuse = self.norm is None  # without a norm, bias+ReLU fuse into the conv
      x = layers.ConvND(self.features, 3, padding=self.padding.upper(),
                        spatial_dims=self.spatial_dims, use_bias=fuse,
                        activation="relu" if fuse else None,
                        kernels=self.kernels, name=f"conv{i}")(x)
      if not fuse:
        norm = layers.normalization(self.norm, self.bn_axis_name, name=f"norm{i}")
        x = norm(x, use_running_average=not train) if self.norm == "batch" else norm(x)
        x = jax.nn.relu(x)
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


class UNet(nn.Module):
  """U-Net for `(N, *S, C)` images or volumes -> `(N, *S_out, num_classes)` logits.

  Attributes:
    spatial_dims: 2 or 3.
    features: channels per level, top to bottom (the last is the bottleneck).
    num_classes: output channels K.
    norm: None, "batch" (synchronised over `bn_axis_name`) or "instance".
    dropout: dropout rate after each block (0 disables; MC dropout uses it).
    padding: "same" (output size = input size) or "valid" (the paper: every
      3x3 conv loses a border, skips are centre-cropped; 572^2 in -> 388^2 out).
    kernels: "auto" | "xla" | "pallas" convolution implementation.
    deep_supervision: with `train=True`, also return 1x1-conv heads of the
      lower decoder levels (a list, finest first) for auxiliary losses.
  """
  spatial_dims: int = 3
  features: Sequence[int] = (16, 32, 64, 128)
  num_classes: int = 2
  norm: Optional[str] = None
  dropout: float = 0.0
  padding: str = "same"
  kernels: str = "auto"
  deep_supervision: bool = False
  bn_axis_name: Optional[str] = None

  @classmethod
  def original(cls, **overrides) -> "UNet":
    """Ronneberger 2015: 64..1024 filters, valid 3x3 convs, 2 classes (31,030,658 params with 1 input channel)."""
    kw = dict(spatial_dims=2, features=(64, 128, 256, 512, 1024), num_classes=2,
              padding="valid")
    kw.update(overrides)
    return cls(**kw)

  @classmethod
  def cicek(cls, **overrides) -> "UNet":
    """Cicek 2016 3D U-Net: 32..512 filters (doubled inside each level in the paper;
    here the standard two equal convs per level), batch norm, valid convs, 3 classes."""
    kw = dict(spatial_dims=3, features=(32, 64, 128, 256, 512), num_classes=3,
              norm="batch", padding="valid")
    kw.update(overrides)
    return cls(**kw)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    nd = self.spatial_dims
    if x.ndim != nd + 2:
      raise ValueError(f"UNet(spatial_dims={nd}) expects (N, *S, C) inputs with {nd} "
                       f"spatial dims, got shape {x.shape}")
    block = lambda f, name: ConvBlock(
        f, spatial_dims=nd, padding=self.padding, norm=self.norm, dropout=self.dropout,
        kernels=self.kernels, bn_axis_name=self.bn_axis_name, name=name)
    skips = []
    for level, f in enumerate(self.features[:-1]):
      x = block(f, f"down{level}")(x, train=train)
      skips.append(x)
      x = layers.max_pool(x, nd)
    x = block(self.features[-1], "bottleneck")(x, train=train)
    aux = []
    for level in reversed(range(len(self.features) - 1)):
      f = self.features[level]
      x = layers.UpConv(f, spatial_dims=nd, kernels=self.kernels, name=f"upconv{level}")(x)
      skip = skips[level]
      if self.padding == "valid":
        skip = layers.center_crop(skip, x.shape[1:-1])
      x = jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1)
      x = block(f, f"up{level}")(x, train=train)
      if self.deep_supervision and train and level > 0:
        aux.append(layers.ConvND(self.num_classes, 1, spatial_dims=nd, kernels=self.kernels,
                                 name=f"aux_head{level}")(x))
    logits = layers.ConvND(self.num_classes, 1, spatial_dims=nd, kernels=self.kernels,
                           name="head")(x)
    if self.deep_supervision and train:
      return logits, aux[::-1]
    return logits
