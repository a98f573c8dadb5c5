"""V-Net (Milletari, Navab & Ahmadi 2016, "V-Net: Fully Convolutional Neural
Networks for Volumetric Medical Image Segmentation", 3DV).

Architecture (Fig. 2 of the paper; `features=(16, 32, 64, 128, 256)`, input
128x128x64 in the paper, any size divisible by 16 here):

| stage        | resolution | convs (5x5x5, PReLU) | channels | residual added to            |
|--------------|-----------:|---------------------:|---------:|------------------------------|
| enc0 (input) | 1          | 1                    | 16       | input tiled to 16 channels   |
| down0        | 1/2        | 2x2x2 stride-2 conv  | 32       |                              |
| enc1         | 1/2        | 2                    | 32       | down0 output                 |
| down1, enc2  | 1/4        | 3                    | 64       | down1 output                 |
| down2, enc3  | 1/8        | 3                    | 128      | down2 output                 |
| down3, enc4  | 1/16       | 3 (bottom)           | 256      | down3 output                 |
| up3, dec3    | 1/8        | 2x2x2 up to 128, concat enc3 -> 3 convs | 256 | concatenation      |
| up2, dec2    | 1/4        | up to 64, concat enc2 -> 3 convs        | 128 | concatenation      |
| up1, dec1    | 1/2        | up to 32, concat enc1 -> 2 convs        | 64  | concatenation      |
| up0, dec0    | 1          | up to 16, concat enc0 -> 1 conv         | 32  | concatenation      |
| head         | 1          | 1x1x1 conv                              | K   |                    |

Every convolution has a bias and is followed by a per-channel PReLU, except
the last convolution of each stage, where the residual is added *before* the
PReLU (`PReLU(conv(x) + b + residual)`, fused in `layers.ConvND`). The down
convolutions and the up (transposed, `layers.UpConv`) convolutions are also
followed by a PReLU. This is the layer order of the authors' Caffe prototxt
(github.com/faustomilletari/VNet, `train_noPooling_ResNet_cinque.prototxt`),
with the number of convolutions per stage of the paper's Fig. 2.

Differences to other implementations, checked against their source:
* The authors' Caffe prototxt uses (1, 1, 2, 3, 3) encoder convs and
  (3, 2, 1, 1) decoder convs (fewer than Fig. 2) and ends in a 5x5x5 conv to K
  channels + PReLU before the 1x1x1 conv; we follow Fig. 2 and use a single
  1x1x1 head.
* MONAI `monai.networks.nets.VNet` (adapted from mattmacy/vnet.pytorch) uses
  (1, 2, 3, 2) encoder convs (2 in the bottom stage, not 3) and (2, 2, 1, 1)
  decoder convs, BatchNorm after every conv (so conv + BN per layer), ELU by
  default instead of PReLU, an extra activation after every conv *and* after
  the residual sum, a 5x5x5 conv + BN + act before its 1x1x1 head, and dropout
  (p=0.5) on the deeper stages plus a fixed p=0.5 dropout on every skip
  connection. We keep the paper: no normalisation by default (`norm="batch"`
  or `"instance"` adds one after each conv, and then the conv has no bias),
  PReLU, and dropout only where `dropout > 0` (after every stage).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import layers
from medjax.models import remat as remat_lib


class PReLU(nn.Module):
  """Parametric ReLU with one learned slope per channel, initialised at 0.25 (He 2015)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param("slope", nn.initializers.constant(0.25), (x.shape[-1],))
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class ResidualStage(nn.Module):
  """`n_convs` 5x5x5 convolutions with PReLU; the stage input is added before
  the last PReLU (`residual`, same shape as the output)."""
  features: int
  n_convs: int
  spatial_dims: int = 3
  kernel_size: int = 5
  norm: Optional[str] = None
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  dtype: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, residual: jax.Array, train: bool) -> jax.Array:
    # `train` is positional so that `flax.linen.remat` can hold it static.
    for i in range(self.n_convs):
      last = i == self.n_convs - 1
      if self.norm is None:
        # bias + residual + PReLU all fused into the convolution
        x = layers.ConvND(self.features, self.kernel_size, spatial_dims=self.spatial_dims,
                          activation="prelu", kernels=self.kernels, dtype=self.dtype,
                          name=f"conv{i}")(x, residual if last else None)
      else:
        x = layers.ConvND(self.features, self.kernel_size, spatial_dims=self.spatial_dims,
                          use_bias=False, kernels=self.kernels, dtype=self.dtype,
                          name=f"conv{i}")(x)
        norm = layers.normalization(self.norm, self.bn_axis_name, name=f"norm{i}",
                                    dtype=self.dtype)
        x = norm(x, use_running_average=not train) if self.norm == "batch" else norm(x)
        if last:
          x = x + residual.astype(x.dtype)
        x = PReLU(name=f"prelu{i}")(x)
    return x


class VNet(nn.Module):
  """V-Net for `(N, D, H, W, C)` volumes -> `(N, D, H, W, num_classes)` logits.

  Spatial sizes must be divisible by 2**(len(features) - 1) (16 by default).

  Attributes:
    num_classes: output channels K (2 in the paper: background/prostate).
    in_channels: expected input channels; must divide `features[0]` (the input
      is tiled to `features[0]` channels for the first residual connection).
    features: channels per resolution level, top to bottom.
    encoder_convs: 5x5x5 convs per encoder stage (the last is the bottom stage).
    decoder_convs: 5x5x5 convs per decoder stage, deepest first.
    dropout: dropout rate after every stage (0 disables; MC dropout uses it).
    norm: None (the paper), "batch" or "instance" after each conv.
    spatial_dims: 3 (the paper) or 2.
    kernels: "auto" | "xla" | "pallas" convolution implementation.
    bn_axis_name: axis over which BatchNorm statistics are synchronised.
    dtype: compute dtype of the activations, e.g. "bfloat16" (None: the
      input's); float32 parameters, float32 logits (so a float32 loss). bf16
      has float32's exponent range, so no loss scaling is needed.
    remat: recompute each residual stage in the backward pass
      (`jax.checkpoint`, `medjax.models.remat`); `remat_policy` names what is
      still saved.
  """
  num_classes: int = 2
  in_channels: int = 1
  features: Sequence[int] = (16, 32, 64, 128, 256)
  encoder_convs: Sequence[int] = (1, 2, 3, 3, 3)
  decoder_convs: Sequence[int] = (3, 3, 2, 1)
  dropout: float = 0.0
  norm: Optional[str] = None
  spatial_dims: int = 3
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  dtype: Optional[str] = None
  remat: bool = False
  remat_policy: str = "nothing_saveable"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    nd = self.spatial_dims
    levels = len(self.features)
    if len(self.encoder_convs) != levels or len(self.decoder_convs) != levels - 1:
      raise ValueError(f"VNet: {levels} feature levels need {levels} encoder_convs and "
                       f"{levels - 1} decoder_convs, got {tuple(self.encoder_convs)} and "
                       f"{tuple(self.decoder_convs)}")
    if x.ndim != nd + 2 or x.shape[-1] != self.in_channels:
      raise ValueError(f"VNet expects (N, *S, {self.in_channels}) inputs with {nd} spatial "
                       f"dims, got shape {x.shape}")
    factor = 2 ** (levels - 1)
    if any(s % factor for s in x.shape[1:-1]):
      raise ValueError(f"VNet: spatial size {x.shape[1:-1]} must be divisible by {factor}")
    if self.features[0] % self.in_channels:
      raise ValueError(f"VNet: in_channels={self.in_channels} must divide "
                       f"features[0]={self.features[0]}")

    stage_cls = remat_lib.stage(ResidualStage, self.remat, self.remat_policy,
                                static_argnums=(3,))
    stage = lambda f, n, name: stage_cls(
        f, n, spatial_dims=nd, norm=self.norm, kernels=self.kernels,
        bn_axis_name=self.bn_axis_name, dtype=self.dtype, name=name)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    drop = lambda h: (nn.Dropout(self.dropout, deterministic=not train)(h)
                      if self.dropout > 0 else h)

    # input stage: residual = input tiled to features[0] channels
    tiled = jnp.tile(x, (1,) * (nd + 1) + (self.features[0] // self.in_channels,))
    h = drop(stage(self.features[0], self.encoder_convs[0], "enc0")(x, tiled, train))
    skips = [h]
    for level in range(1, levels):
      down = layers.ConvND(self.features[level], 2, strides=2, padding="VALID",
                           spatial_dims=nd, activation="prelu", kernels=self.kernels,
                           dtype=self.dtype, name=f"down{level - 1}")(h)
      h = drop(stage(self.features[level], self.encoder_convs[level], f"enc{level}")(
          down, down, train))
      skips.append(h)

    for i, level in enumerate(reversed(range(levels - 1))):
      f = self.features[level]
      up = layers.UpConv(f, spatial_dims=nd, kernels=self.kernels, name=f"up{level}")(
          h if self.dtype is None else h.astype(self.dtype))
      up = PReLU(name=f"up{level}_prelu")(up)
      cat = jnp.concatenate([up, skips[level].astype(up.dtype)], axis=-1)
      h = drop(stage(2 * f, self.decoder_convs[i], f"dec{level}")(cat, cat, train))

    return layers.ConvND(self.num_classes, 1, spatial_dims=nd, kernels=self.kernels,
                         dtype=self.dtype, name="head")(h).astype(jnp.float32)
