"""The 3D U-Net of the MLPerf Training benchmark (KiTS19), layer for layer.

The reference is mlcommons/training `image_segmentation/pytorch` (retired to
`retired_benchmarks/unet3d/pytorch`), `model/unet3d.py` and `model/layers.py`,
a U-Net variant after No New-Net (Isensee et al. 2018):

* filters `[32, 64, 128, 256, 320]` (`Unet3D.__init__`);
* `InputBlock`: two (3x3x3 conv, stride 1, padding 1 -> norm -> ReLU) units;
* four `DownsampleBlock`s `f_i -> f_{i+1}` and a bottleneck `320 -> 320`, each a
  3x3x3 conv of stride 2 (padding 1) and a 3x3x3 conv of stride 1, every conv
  followed by norm and ReLU (`conv_block_factory`);
* five `UpsampleBlock`s: a 2x2x2 transposed conv of stride 2 (with a bias, no
  norm, no activation), concatenation `(upsampled, skip)` on the channel axis,
  then two conv -> norm -> ReLU units (`2 f -> f`, `f -> f`);
* `OutputLayer`: a 1x1x1 conv with a bias to `n_class` (3) logits.

Convolutions followed by a norm have no bias (`bias=norm_type == "none"`), the
norm is `InstanceNorm3d(affine=True)` (eps 1e-5). With one input channel and
three classes the network has 31,190,243 parameters (checked against the
PyTorch reference in the tests).

PyTorch's stride-2 convolutions pad one voxel on both sides; "SAME" padding
would pad (0, 1) and shift every window by one voxel, so the input is padded by
(1, 1) and convolved with "VALID" padding, which reads the same voxels. Every
convolution goes through `medjax.layers` (the `kernels="auto"|"xla"|"pallas"`
switch), the up-convs through `layers.UpConv` (one matmul, see
`layers.upconv2x`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import layers
from medjax.models import remat as remat_lib

# model/unet3d.py: `filters = [32, 64, 128, 256, 320]`
FILTERS = (32, 64, 128, 256, 320)
# torch.nn.InstanceNorm3d's default eps
NORM_EPSILON = 1e-5


class ConvUnits(nn.Module):
  """Two conv -> norm -> ReLU units; the first with stride 1 or 2 (padding 1 as
  PyTorch's). One of the reference's `InputBlock`, `DownsampleBlock` (stride 2)
  or the two convs of an `UpsampleBlock`."""
  features: int
  stride: int = 1
  norm: Optional[str] = "instance"
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  dtype: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    # `train` is positional so that `flax.linen.remat` can hold it static.
    unit = dict(train=train, norm=self.norm, bn_axis_name=self.bn_axis_name, spatial_dims=3,
                kernels=self.kernels, dtype=self.dtype, norm_epsilon=NORM_EPSILON)
    if self.stride == 1:
      x = layers.conv_norm_act(x, self.features, 3, conv_name="conv0", norm_name="norm0", **unit)
    else:
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
      x = layers.conv_norm_act(x, self.features, 3, strides=self.stride, padding="VALID",
                               conv_name="conv0", norm_name="norm0", **unit)
    return layers.conv_norm_act(x, self.features, 3, conv_name="conv1", norm_name="norm1", **unit)


class MLPerfUNet3D(nn.Module):
  """The MLPerf Training 3D U-Net: `(N, D, H, W, C)` -> logits `(N, D, H, W, num_classes)`.

  Every spatial size must be a multiple of `2 ** len(filters)` (32 with the
  reference's five filters: four down blocks and the bottleneck halve it).

  Attributes:
    filters: channels of the input block and the down blocks (the last is the
      bottleneck's too); the reference's `(32, 64, 128, 256, 320)`.
    num_classes: output channels (KiTS19: background, kidney, tumour).
    norm: "instance" (the reference's default) or "batch".
    kernels: "auto" | "xla" | "pallas" convolution implementation.
    bn_axis_name: mesh axis of the batch-norm statistics (norm="batch" only).
    dtype: compute dtype of the activations, e.g. "bfloat16" (None: the
      input's); parameters stay float32, logits are returned in float32.
    remat, remat_policy: recompute each block in the backward pass
      (`medjax.models.remat`).
  """
  filters: Sequence[int] = FILTERS
  num_classes: int = 3
  norm: Optional[str] = "instance"
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  dtype: Optional[str] = None
  remat: bool = False
  remat_policy: str = "nothing_saveable"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    filters = tuple(int(f) for f in self.filters)
    factor = 2 ** len(filters)
    if x.ndim != 5 or any(s % factor for s in x.shape[1:4]):
      raise ValueError(f"MLPerfUNet3D(filters={filters}) expects (N, D, H, W, C) inputs with "
                       f"every spatial size a multiple of {factor}, got shape {x.shape}")
    units = remat_lib.stage(ConvUnits, self.remat, self.remat_policy, static_argnums=(2,))
    common = dict(norm=self.norm, kernels=self.kernels, bn_axis_name=self.bn_axis_name,
                  dtype=self.dtype)
    cast = (lambda h: h) if self.dtype is None else (lambda h: h.astype(self.dtype))
    x = cast(x)
    x = units(filters[0], name="input_block", **common)(x, train)
    skips = [x]
    for i, f in enumerate(filters[1:]):
      x = units(f, stride=2, name=f"down{i}", **common)(x, train)
      skips.append(x)
    x = units(filters[-1], stride=2, name="bottleneck", **common)(x, train)
    ups = (filters[-1],) + tuple(reversed(filters[:-1]))
    for i, (f, skip) in enumerate(zip(ups, reversed(skips))):
      x = layers.UpConv(f, spatial_dims=3, kernels=self.kernels, use_bias=True,
                        name=f"up{i}_deconv")(x)
      x = jnp.concatenate([x.astype(skip.dtype), skip], axis=-1)  # torch.cat((x, skip), dim=1)
      x = units(f, name=f"up{i}", **common)(x, train)
    return layers.ConvND(self.num_classes, 1, spatial_dims=3, kernels=self.kernels,
                         name="output")(x).astype(jnp.float32)


__all__ = ["MLPerfUNet3D", "FILTERS"]
