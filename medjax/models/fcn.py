"""Fully convolutional networks for semantic segmentation (Long, Shelhamer &
Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation", CVPR).

A VGG-like encoder (5 blocks of 3x3 convs, each followed by 2x2 max pooling:
output strides 2, 4, 8 "pool3", 16 "pool4", 32 "pool5"), the fully connected
layers turned into convolutions ("fc6" k x k, "fc7" 1x1, each with ReLU and
dropout) and a 1x1 class scorer ("score_fr"). Coarse scores are upsampled back
to the input size, optionally fused with scores of finer pooling layers:

| variant | decoder                                                                                   |
|---------|-------------------------------------------------------------------------------------------|
| 32s     | score_fr (stride 32) -> fixed bilinear x32                                                |
| 16s     | 2x learnable deconv(score_fr) + score_pool4 (1x1 conv on pool4) -> fixed bilinear x16     |
| 8s      | 2x deconv(16s fusion) + score_pool3 (1x1 conv on pool3) -> fixed bilinear x8              |

As in the paper, the 2x deconvolutions (4x4 kernels, stride 2) are initialised
to bilinear interpolation and then learned, the score_pool layers are
zero-initialised (training starts from the coarser net's output), and the final
upsampling is fixed bilinear interpolation (`jax.image.resize`). "Same"
padding replaces the paper's 100-pixel padding + crop, so the output has the
input's spatial size for sizes divisible by 32.

Default encoder: `backbone_features=(32, 64, 128, 256, 256)` with
`backbone_convs=(2, 2, 3, 3, 3)` (VGG-16's layout at 1/2 to 1/4 of its width)
and `fc_features=512`, `fc_kernel=3`. `FCN.vgg16()` is the paper's FCN-VGG16
layout (64..512 channels, 7x7 fc6 and 1x1 fc7 with 4096 channels).

The 2x deconvolutions call `jax.lax.conv_transpose` directly (an overlapping
4x4 stride-2 window, which `layers.UpConv` does not cover); every other
convolution goes through `layers.ConvND` and follows `kernels`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax import layers
from medjax.models.vgg import vgg_encoder


def bilinear_kernel(factor: int, channels: int, spatial_dims: int = 2) -> np.ndarray:
  """Transposed-conv kernel `(k,)*d + (C, C)` that upsamples by `factor` bilinearly
  (channel i -> channel i), k = 2 * factor - factor % 2 (as in the FCN code)."""
  size = 2 * factor - factor % 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  filt1d = 1 - np.abs(np.arange(size) - center) / factor
  filt = filt1d
  for _ in range(spatial_dims - 1):
    filt = np.multiply.outer(filt, filt1d)
  kernel = np.zeros(filt.shape + (channels, channels), np.float32)
  for c in range(channels):
    kernel[..., c, c] = filt
  return kernel


class Deconv2x(nn.Module):
  """Learnable 2x upsampling: 4x..x4 stride-2 transposed conv, bilinear init.

  `(N, *S, C) -> (N, *(2 S), features)`; with the bilinear initialisation and
  features == C it equals bilinear upsampling away from the borders.
  """
  features: int
  spatial_dims: int = 2
  bilinear_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nd = self.spatial_dims
    cin = x.shape[-1]
    if self.bilinear_init and cin == self.features:
      init = lambda key, shape, dtype=jnp.float32: jnp.asarray(
          bilinear_kernel(2, cin, nd), dtype)
    else:
      init = nn.initializers.lecun_normal()
    kernel = self.param("kernel", init, (4,) * nd + (cin, self.features))
    spatial = "DHW"[-nd:]
    # Explicit padding (2, 2) per dim gives out = 2 * in with the kernel's
    # taps centred like torch ConvTranspose(k=4, s=2, p=1) / Caffe's FCN deconv.
    return jax.lax.conv_transpose(
        x, kernel.astype(x.dtype), strides=(2,) * nd, padding=((2, 2),) * nd,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))


def upsample_bilinear(x: jax.Array, factor: int) -> jax.Array:
  """Fixed bilinear upsampling of the spatial dims of `(N, *S, C)` by `factor`."""
  shape = (x.shape[0],) + tuple(s * factor for s in x.shape[1:-1]) + (x.shape[-1],)
  return jax.image.resize(x, shape, method="linear")


class FCN(nn.Module):
  """FCN-32s/16s/8s: `(N, *S, C) -> (N, *S, num_classes)` logits (S divisible by 32).

  Attributes:
    num_classes: K.
    variant: "32s", "16s" or "8s".
    backbone_features: channels of the 5 encoder blocks.
    backbone_convs: 3x3 convs per encoder block.
    fc_features, fc_kernel: width and window of the convolutionalised fc6
      (fc7 is 1x1 with the same width).
    dropout: after fc6 and fc7 (0.5 in the paper; 0 disables).
    norm: None (the paper) or "batch"/"instance" after every encoder conv.
    spatial_dims: 2 (the paper) or 3.
    kernels: "auto" | "xla" | "pallas" convolution implementation.
    bn_axis_name: axis over which BatchNorm statistics are synchronised.
  """
  num_classes: int = 2
  variant: str = "8s"
  backbone_features: Sequence[int] = (32, 64, 128, 256, 256)
  backbone_convs: Sequence[int] = (2, 2, 3, 3, 3)
  fc_features: int = 512
  fc_kernel: int = 3
  dropout: float = 0.0
  norm: Optional[str] = None
  spatial_dims: int = 2
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None

  @classmethod
  def vgg16(cls, **overrides) -> "FCN":
    """FCN-VGG16 layout of the paper (64..512 encoder, 7x7x4096 fc6, 4096 fc7, dropout 0.5)."""
    kw = dict(backbone_features=(64, 128, 256, 512, 512), backbone_convs=(2, 2, 3, 3, 3),
              fc_features=4096, fc_kernel=7, dropout=0.5)
    kw.update(overrides)
    return cls(**kw)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    nd = self.spatial_dims
    if self.variant not in ("32s", "16s", "8s"):
      raise ValueError(f"variant={self.variant!r}: expected '32s', '16s' or '8s'")
    if len(self.backbone_features) != 5 or len(self.backbone_convs) != 5:
      raise ValueError("FCN needs 5 encoder blocks (output stride 32): got "
                       f"backbone_features={tuple(self.backbone_features)}, "
                       f"backbone_convs={tuple(self.backbone_convs)}")
    if x.ndim != nd + 2 or any(s % 32 for s in x.shape[1:-1]):
      raise ValueError(f"FCN(spatial_dims={nd}) expects (N, *S, C) inputs with S divisible "
                       f"by 32, got shape {x.shape}")
    pools = vgg_encoder(x, tuple(zip(self.backbone_features, self.backbone_convs)), train=train,
                        norm=self.norm, bn_axis_name=self.bn_axis_name, spatial_dims=nd,
                        kernels=self.kernels)
    x = pools[-1]
    for name, k in (("fc6", self.fc_kernel), ("fc7", 1)):
      x = layers.ConvND(self.fc_features, k, spatial_dims=nd, activation="relu",
                        kernels=self.kernels, name=name)(x)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    k = self.num_classes
    score = layers.ConvND(k, 1, spatial_dims=nd, kernels=self.kernels, name="score_fr")(x)
    stride = 32
    skips = {"16s": [(3, "pool4")], "8s": [(3, "pool4"), (2, "pool3")]}.get(self.variant, [])
    for idx, name in skips:
      up = Deconv2x(k, spatial_dims=nd, name=f"upscore_{name}")(score)
      side = layers.ConvND(k, 1, spatial_dims=nd, kernels=self.kernels,
                           kernel_init=nn.initializers.zeros, name=f"score_{name}")(pools[idx])
      score = up + side.astype(up.dtype)
      stride //= 2
    return upsample_bilinear(score, stride)
