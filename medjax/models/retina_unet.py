"""Retina U-Net (Jaeger et al. 2018) in 2D and 3D: RetinaNet heads on a U-Net decoder.

The encoder/decoder is the U-Net of `medjax.models.unet` (its `ConvBlock`s,
2x max pooling, `layers.UpConv` up-convolutions and skip concatenations, "same"
padding). RetinaNet's two heads (Lin et al. 2017) -- a classification subnet
with one sigmoid per foreground class and anchor, a box subnet with `2n` deltas
per anchor (`medjax.detection.coder`) -- are shared across the decoder levels
in `head_levels`, each level first projected to `head_features` channels by a
1x1 convolution (the FPN lateral); the classification bias starts at
`-log((1 - pi) / pi)`, pi = 0.01, so that training starts from "no object"
(Lin et al. 2017). A segmentation head (1x1 conv, `num_classes + 1` classes with
background) on the full-resolution decoder output gives Retina U-Net's extra
supervision (trained with medjax's Dice + CE); `segmentation_head=False` is the
plain RetinaNet on a U-Net backbone. nnDetection (Baumgartner et al. 2021)
builds its Retina U-Net the same way.

Levels: level l has stride `prod(pool_sizes[:l])` per axis (2^l by default);
level `len(features) - 1` is the bottleneck. Anchors: see `anchors_for`.

Outputs (`__call__(x, *, train)`): `{"class_logits": (N, A_total, K),
"box_deltas": (N, A_total, 2n)[, "seg_logits": (N, *S, K + 1)]}` with the
anchors concatenated over `head_levels` in the given order, cells in C order,
anchor shapes last (the order of `medjax.detection.anchors.multilevel_anchors`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from medjax import layers
from medjax.detection.anchors import AnchorSet, multilevel_anchors
from medjax.models.unet import ConvBlock


def _nested_tuple(value):
  if isinstance(value, (list, tuple)):
    return tuple(_nested_tuple(v) for v in value)
  return value


class DetectionHead(nn.Module):
  """`convs` x (3^n conv -> norm -> ReLU) then a 3^n conv to `outputs` channels.

  `bias_init` sets the last conv's bias (RetinaNet's prior for classification).
  """
  outputs: int
  features: int
  convs: int = 2
  spatial_dims: int = 3
  norm: Optional[str] = None
  bias_init: float = 0.0
  kernels: str = "auto"
  dtype: Optional[str] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(self.convs):
      x = layers.conv_norm_act(x, self.features, 3, train=train, norm=self.norm,
                               conv_name=f"conv{i}", norm_name=f"norm{i}",
                               spatial_dims=self.spatial_dims, kernels=self.kernels,
                               dtype=self.dtype)
    x = layers.ConvND(self.outputs, 3, spatial_dims=self.spatial_dims, use_bias=False,
                      kernels=self.kernels, dtype=self.dtype,
                      kernel_init=nn.initializers.normal(0.01), name="out")(x)
    bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.outputs,))
    return x.astype(jnp.float32) + bias


class RetinaUNet(nn.Module):
  """Retina U-Net for `(N, *S, C)` inputs (see the module docstring).

  Attributes:
    spatial_dims: 2 or 3.
    features: U-Net channels per level, top to bottom (the last is the bottleneck).
    num_classes: foreground classes K (the segmentation head has K + 1).
    head_levels: levels carrying the detection heads (level l: stride 2^l).
    anchor_sizes: per head level, per axis, the anchor sizes in voxels (the
      anchor shapes of a cell are every combination); default `(2 s, 3 s)` per
      axis for a level of stride s. Every level needs the same number of shapes.
    head_features, head_convs: width and depth of the shared heads.
    segmentation_head: False gives the plain RetinaNet on a U-Net.
    norm: None, "batch" or "instance" in the encoder/decoder.
    head_norm: None (RetinaNet) or "instance" (nnDetection's heads use group norm) in the
      heads, which are shared across levels ("batch" would mix the levels' statistics).
    pool_sizes: pooling factor per down step (an int or one per axis; default 2).
    kernel_sizes: conv window per level (default 3).
    prior_probability: the foreground probability the classifier starts at.
  """
  spatial_dims: int = 3
  features: Sequence[int] = (16, 32, 64, 128)
  num_classes: int = 1
  head_levels: Sequence[int] = (1, 2)
  anchor_sizes: Optional[Sequence] = None
  head_features: int = 32
  head_convs: int = 2
  segmentation_head: bool = True
  norm: Optional[str] = None
  head_norm: Optional[str] = None
  dropout: float = 0.0
  pool_sizes: Optional[Sequence[Union[int, Sequence[int]]]] = None
  kernel_sizes: Optional[Sequence[Union[int, Sequence[int]]]] = None
  prior_probability: float = 0.01
  kernels: str = "auto"
  bn_axis_name: Optional[str] = None
  dtype: Optional[str] = None

  # ------------------------------------------------------------------ geometry (no parameters)

  def level_strides(self) -> tuple[tuple[int, ...], ...]:
    """Stride per axis of every level, top (1, 1, 1) to the bottleneck."""
    nd = self.spatial_dims
    pools = self.pool_sizes or (2,) * (len(self.features) - 1)
    strides = [(1,) * nd]
    for pool in pools:
      pool = (pool,) * nd if isinstance(pool, int) else tuple(pool)
      strides.append(tuple(s * p for s, p in zip(strides[-1], pool)))
    return tuple(strides)

  def head_anchor_sizes(self) -> tuple:
    """Per head level, per axis, the anchor sizes (voxels)."""
    strides = self.level_strides()
    for level in self.head_levels:
      if not 0 <= level < len(self.features):
        raise ValueError(f"RetinaUNet head level {level}: expected 0..{len(self.features) - 1}")
    if self.anchor_sizes is None:
      return tuple(tuple((2.0 * s, 3.0 * s) for s in strides[level]) for level in self.head_levels)
    sizes = _nested_tuple(self.anchor_sizes)
    if len(sizes) != len(self.head_levels) or any(len(level) != self.spatial_dims
                                                  for level in sizes):
      raise ValueError(f"RetinaUNet anchor_sizes: expected, for each of the {len(self.head_levels)}"
                       f" head levels, {self.spatial_dims} tuples of sizes; got {sizes}")
    return sizes

  def anchors_per_location(self) -> int:
    counts = {int(np.prod([len(axis) for axis in level])) for level in self.head_anchor_sizes()}
    if len(counts) != 1:
      raise ValueError(f"RetinaUNet anchor_sizes give {sorted(counts)} anchor shapes on different "
                       "levels; the shared heads need the same number on every level")
    return counts.pop()

  # ------------------------------------------------------------------ network

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> dict:
    nd = self.spatial_dims
    if x.ndim != nd + 2:
      raise ValueError(f"RetinaUNet(spatial_dims={nd}) expects (N, *S, C) inputs, got {x.shape}")
    levels = len(self.features)
    strides = self.level_strides()
    if any(s % t for s, t in zip(x.shape[1:-1], strides[-1])):
      raise ValueError(f"RetinaUNet: input spatial shape {x.shape[1:-1]} must be divisible by "
                       f"the total pooling {strides[-1]}")
    kernel_sizes = self.kernel_sizes or (3,) * levels
    pools = self.pool_sizes or (2,) * (levels - 1)
    num_anchors = self.anchors_per_location()
    block = lambda level, name: ConvBlock(
        self.features[level], spatial_dims=nd, kernel_size=kernel_sizes[level], norm=self.norm,
        dropout=self.dropout, kernels=self.kernels, bn_axis_name=self.bn_axis_name,
        dtype=self.dtype, name=name)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    skips = []
    for level in range(levels - 1):
      x = block(level, f"down{level}")(x, train)
      skips.append(x)
      x = layers.max_pool(x, nd, pools[level])
    x = block(levels - 1, "bottleneck")(x, train)
    decoded = {levels - 1: x}
    for level in reversed(range(levels - 1)):
      x = layers.UpConv(self.features[level], spatial_dims=nd, kernels=self.kernels,
                        factors=pools[level], name=f"upconv{level}")(x)
      x = jnp.concatenate([skips[level], x.astype(skips[level].dtype)], axis=-1)
      x = block(level, f"up{level}")(x, train)
      decoded[level] = x

    if self.head_norm not in (None, "instance"):
      raise ValueError(f"RetinaUNet head_norm={self.head_norm!r}: expected None or 'instance'")
    cls_head = DetectionHead(num_anchors * self.num_classes, self.head_features, self.head_convs,
                             nd, self.head_norm, -float(np.log((1 - self.prior_probability)
                                                          / self.prior_probability)),
                             self.kernels, self.dtype, name="class_head")
    box_head = DetectionHead(num_anchors * 2 * nd, self.head_features, self.head_convs, nd,
                             self.head_norm, 0.0, self.kernels, self.dtype, name="box_head")
    class_logits, box_deltas = [], []
    for level in self.head_levels:
      feature = layers.ConvND(self.head_features, 1, spatial_dims=nd, kernels=self.kernels,
                              dtype=self.dtype, name=f"lateral{level}")(decoded[level])
      n = feature.shape[0]
      class_logits.append(cls_head(feature, train).reshape(n, -1, self.num_classes))
      box_deltas.append(box_head(feature, train).reshape(n, -1, 2 * nd))
    out = {"class_logits": jnp.concatenate(class_logits, axis=1),
           "box_deltas": jnp.concatenate(box_deltas, axis=1)}
    if self.segmentation_head:
      out["seg_logits"] = layers.ConvND(self.num_classes + 1, 1, spatial_dims=nd,
                                        kernels=self.kernels, name="seg_head")(
                                            decoded[0]).astype(jnp.float32)
    return out


def anchors_for(model: RetinaUNet, input_shape: Sequence[int]) -> AnchorSet:
  """The anchors matching `model`'s outputs for an input of `input_shape`.

  Args:
    input_shape: the spatial shape `S`, or the full `(N, *S, C)` input shape.
  Returns:
    `AnchorSet` whose `boxes (A_total, 2n)` row i is the anchor of output row i.
  """
  shape = tuple(int(s) for s in input_shape)
  if len(shape) == model.spatial_dims + 2:
    shape = shape[1:-1]
  if len(shape) != model.spatial_dims:
    raise ValueError(f"input shape {tuple(input_shape)}: expected {model.spatial_dims} spatial "
                     "dims (or (N, *S, C))")
  strides = model.level_strides()
  return multilevel_anchors(shape, [strides[level] for level in model.head_levels],
                            model.head_anchor_sizes())
