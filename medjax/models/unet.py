"""U-Net (Ronneberger et al. 2015) in 2D and 3D (Cicek et al. 2016).

An encoder of double-conv levels joined by 2x max pooling, a decoder of 2x
transposed convolutions ("up-convs") whose output is concatenated with the
encoder feature map of the same level (cropped to size with "valid" padding),
and a 1x1 convolution head. `UNet.original()` is the network of the U-Net
paper; `UNet.cicek()` the 3D U-Net of Cicek 2016.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import layers
from medjax.models import remat as remat_lib


class ConvBlock(nn.Module):
  """Two (conv -> norm -> activation) units, then optional dropout.

  `first_features` sets the first conv's channels (default `features`); Cicek
  2016 uses `features // 2` in the encoder (32 -> 64 within the top level).
  """
  features: int
  first_features: Optional[int] = None
  spatial_dims: int = 3
  kernel_size: Union[int, Sequence[int]] = 3
  padding: str = "same"
  norm: Optional[str] = None
  dropout: float = 0.0
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  dtype: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    # `train` is positional so that `flax.linen.remat` can hold it static.
    for i, f in enumerate((self.first_features or self.features, self.features)):
      x = layers.conv_norm_act(x, f, self.kernel_size, train=train, norm=self.norm,
                               bn_axis_name=self.bn_axis_name, conv_name=f"conv{i}",
                               norm_name=f"norm{i}", spatial_dims=self.spatial_dims,
                               padding=self.padding, kernels=self.kernels, dtype=self.dtype)
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
    kernel_sizes: conv window per level (default 3 everywhere); e.g. (1, 3, 3)
      for the top levels of anisotropic volumes, as nnU-Net plans them (see
      `anisotropic_plan`).
    pool_sizes: pooling (and up-conv) factor per down step (default 2).
    double_in_level: Cicek 2016's channel layout: each encoder level's first
      conv has half the level's channels (32 -> 64, ..., 256 -> 512) and the
      up-convs keep their input's channels (512 -> 512) instead of halving
      them (Ronneberger 2015: 1024 -> 512).
    upconv_bias: whether the up-convs have a bias (Cicek 2016's parameter
      count, 19,069,955, has none there).
    dtype: compute dtype of the activations, e.g. "bfloat16" (None: the
      input's). Parameters stay float32 and are cast where used; the logits
      are returned in float32, so the loss and its Dice statistics are float32.
      bf16 has float32's exponent range, so no loss scaling is needed.
    remat: recompute each encoder/decoder block in the backward pass
      (`jax.checkpoint`, see `medjax.models.remat`) instead of storing its
      activations; `remat_policy` names what is still saved.
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
  kernel_sizes: Optional[Sequence[Union[int, Sequence[int]]]] = None
  pool_sizes: Optional[Sequence[Union[int, Sequence[int]]]] = None
  double_in_level: bool = False
  upconv_bias: bool = True
  dtype: Optional[str] = None
  remat: bool = False
  remat_policy: str = "nothing_saveable"

  @classmethod
  def original(cls, **overrides) -> "UNet":
    """Ronneberger 2015: 64..1024 filters, valid 3x3 convs, 2 classes (31,030,658 params with 1 input channel)."""
    kw = dict(spatial_dims=2, features=(64, 128, 256, 512, 1024), num_classes=2,
              padding="valid")
    kw.update(overrides)
    return cls(**kw)

  @classmethod
  def cicek(cls, **overrides) -> "UNet":
    """Cicek 2016 3D U-Net: four resolution levels (three 2x2x2 poolings), batch
    norm, valid 3x3x3 convs, 3 classes; a 132x132x116 input gives a 44x44x28
    output. Channels double inside each encoder level (32->64, 64->128,
    128->256, 256->512), the up-convs keep theirs (512, 256, 128) and have no
    bias: with `norm=None`, 19,069,955 parameters for 3 input channels, the
    paper's count; with batch norm each conv's bias gives way to the norm's
    offset and scale (19,072,291)."""
    kw = dict(spatial_dims=3, features=(64, 128, 256, 512), num_classes=3,
              norm="batch", padding="valid", double_in_level=True, upconv_bias=False)
    kw.update(overrides)
    return cls(**kw)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False):
    nd = self.spatial_dims
    if x.ndim != nd + 2:
      raise ValueError(f"UNet(spatial_dims={nd}) expects (N, *S, C) inputs with {nd} "
                       f"spatial dims, got shape {x.shape}")
    levels = len(self.features)
    kernel_sizes = self.kernel_sizes or (3,) * levels
    pool_sizes = self.pool_sizes or (2,) * (levels - 1)
    if len(kernel_sizes) != levels or len(pool_sizes) != levels - 1:
      raise ValueError(f"UNet: {levels} levels need {levels} kernel_sizes and {levels - 1} "
                       f"pool_sizes, got {kernel_sizes} and {pool_sizes}")
    block_cls = remat_lib.stage(ConvBlock, self.remat, self.remat_policy, static_argnums=(2,))
    block = lambda level, name, first=None: block_cls(
        self.features[level], first_features=first, spatial_dims=nd, kernel_size=kernel_sizes[level],
        padding=self.padding, norm=self.norm, dropout=self.dropout,
        kernels=self.kernels, bn_axis_name=self.bn_axis_name, dtype=self.dtype, name=name)
    encoder_first = lambda level: self.features[level] // 2 if self.double_in_level else None
    cast = (lambda h: h) if self.dtype is None else (lambda h: h.astype(self.dtype))
    x = cast(x)
    skips = []
    for level in range(levels - 1):
      x = cast(block(level, f"down{level}", encoder_first(level))(x, train))
      skips.append(x)
      x = layers.max_pool(x, nd, pool_sizes[level])
    x = cast(block(levels - 1, "bottleneck", encoder_first(levels - 1))(x, train))
    aux = []
    for level in reversed(range(len(self.features) - 1)):
      f = x.shape[-1] if self.double_in_level else self.features[level]
      x = layers.UpConv(f, spatial_dims=nd, kernels=self.kernels, factors=pool_sizes[level],
                        use_bias=self.upconv_bias, name=f"upconv{level}")(x)
      skip = skips[level]
      if self.padding == "valid":
        skip = layers.center_crop(skip, x.shape[1:-1])
      x = jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1)
      x = cast(block(level, f"up{level}")(x, train))
      if self.deep_supervision and train and level > 0:
        aux.append(layers.ConvND(self.num_classes, 1, spatial_dims=nd, kernels=self.kernels,
                                 name=f"aux_head{level}")(x).astype(jnp.float32))
    logits = layers.ConvND(self.num_classes, 1, spatial_dims=nd, kernels=self.kernels,
                           name="head")(x).astype(jnp.float32)
    if self.deep_supervision and train:
      return logits, aux[::-1]
    return logits


def anisotropic_plan(spacing: Sequence[float], num_levels: int
                     ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]:
  """Kernel and pool sizes per level for anisotropic voxels, after nnU-Net.

  Isensee et al. 2021: an axis whose spacing is more than twice the finest one
  gets a window of 1 and is not pooled, until pooling the other axes has made
  the voxels close to isotropic. E.g. spacing (2.5, 0.8, 0.8) with 4 levels
  gives kernels ((1,3,3), (3,3,3), (3,3,3), (3,3,3)) and pools ((1,2,2),
  (2,2,2), (2,2,2)).

  Returns:
    `(kernel_sizes, pool_sizes)` with `num_levels` and `num_levels - 1` entries.
  """
  spacing = [float(s) for s in spacing]
  kernels, pools = [], []
  for level in range(num_levels):
    finest = min(spacing)
    coarse = [s > 2.0 * finest for s in spacing]
    kernels.append(tuple(1 if c else 3 for c in coarse))
    if level < num_levels - 1:
      pool = tuple(1 if c else 2 for c in coarse)
      pools.append(pool)
      spacing = [s * p for s, p in zip(spacing, pool)]
  return tuple(kernels), tuple(pools)
