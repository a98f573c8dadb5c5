"""The VGG encoder (Simonyan & Zisserman 2015, "Very deep convolutional networks
for large-scale image recognition", ICLR): blocks of 3x3 convolutions (+ optional
normalisation) + ReLU, each block followed by 2x2 max pooling.

Written once for the models that use it: `ConvNet(variant="vgg")` puts a
classifier on its last block, `FCN` (Long et al. 2015) scores its last three.
Called inside the parent's `nn.compact` `__call__`, so its layers are the
parent's (`block{b}_conv{i}`, `block{b}_norm{i}`: the names pretrained VGG
weights are imported under, `medjax.weights.torchvision`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax

from medjax import layers


def vgg_encoder(x: jax.Array, blocks: Sequence[Sequence[int]], *, train: bool,
                norm: Optional[str], bn_axis_name: Optional[str], spatial_dims: int,
                kernels: str) -> list[jax.Array]:
  """The output of every block (after its pooling) for `blocks = ((channels, convs), ...)`."""
  outputs = []
  for b, (features, convs) in enumerate(blocks):
    for i in range(convs):
      x = layers.conv_norm_act(x, features, 3, train=train, norm=norm,
                               bn_axis_name=bn_axis_name, conv_name=f"block{b}_conv{i}",
                               norm_name=f"block{b}_norm{i}", spatial_dims=spatial_dims,
                               kernels=kernels)
    x = layers.max_pool(x, spatial_dims)
    outputs.append(x)
  return outputs
