"""Using 2D RGB (ImageNet) weights on medical inputs: fewer input channels,
and volumes instead of images.

Input channels (`adapt_input_channels`). A CT or MR slice has one channel, an
ImageNet backbone's first conv three. Two equivalent choices: repeat the grey
channel three times at run time, or sum the first conv's kernel over its input
channels once at import time. Convolution is linear in its input channels, so
`conv(repeat(x, 3), W) == conv(x, W.sum(axis=C_in))` exactly; medjax does the
sum (one third of the first layer's FLOPs and input memory, and the data
pipeline stays 1-channel). The grey image should be scaled as the network's
inputs were (ImageNet-normalised RGB is roughly zero mean, unit variance per
channel; medjax's intensity normalisation gives that). For other channel
counts C the kernel is cycled over the RGB channels to C and scaled by 3 / C,
which keeps the size of the first layer's response to inputs of the same
scale (a heuristic, not an equivalence; as timm's `adapt_input_conv`,
Wightman, pytorch-image-models).

Volumes. Two ways to use a 2D backbone on `(N, D, H, W, C)`:

* slice-wise (`apply_slicewise`): run the 2D network on each of the D slices
  (batched as N*D images) and get `(N, D, ...)` outputs; pool over D (mean or
  max) or feed a small head. The pretrained weights stay exactly as trained;
  no context across slices.
* inflated (`inflate_to_3d`; Carreira & Zisserman 2017, "Quo Vadis, Action
  Recognition?", I3D): each `(kh, kw, C_in, C_out)` kernel becomes
  `(t, kh, kw, C_in, C_out)`, the 2D kernel repeated t times along depth and
  divided by t, so that on a volume that is constant along depth the 3D
  network computes the 2D network's activations (the "boring video" fixed
  point); then fine-tuned in 3D. `method="center"` puts the 2D kernel in the
  middle depth slice (zeros elsewhere) instead: each slice starts as the 2D
  net on that slice. medjax's 3D ResNet has cubic kernels, so the default
  depth t is each kernel's own height (7x7 -> 7x7x7, 3x3 -> 3x3x3). Dense
  and BatchNorm parameters are unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


def adapt_input_channels(kernel: np.ndarray, in_channels: int) -> np.ndarray:
  """First-conv kernel `(*window, C_file, O)` -> `(*window, in_channels, O)`.

  1 channel: the sum over `C_file` (exact for a grey image repeated
  `C_file` times). Otherwise the channels are cycled to `in_channels` and
  scaled by `C_file / in_channels` (timm's `adapt_input_conv`).
  Raises ValueError for `in_channels < 1`.
  """
  kernel = np.asarray(kernel)
  c_file = kernel.shape[-2]
  if in_channels < 1:
    raise ValueError(f"in_channels={in_channels}: expected >= 1")
  if in_channels == c_file:
    return kernel
  if in_channels == 1:
    return kernel.sum(axis=-2, keepdims=True)
  reps = -(-in_channels // c_file)
  tiled = np.concatenate([kernel] * reps, axis=-2)[..., :in_channels, :]
  return tiled * (c_file / in_channels)


def inflate_kernel(kernel: np.ndarray, depth: Optional[int] = None,
                   method: str = "mean") -> np.ndarray:
  """2D conv kernel `(kh, kw, C_in, C_out)` -> 3D `(t, kh, kw, C_in, C_out)`.

  `method="mean"` (I3D): repeated along the new depth axis and divided by t;
  `"center"`: the 2D kernel at depth index t // 2, zeros elsewhere. `depth`
  t defaults to kh.
  """
  kernel = jnp.asarray(kernel)
  if kernel.ndim != 4:
    raise ValueError(f"expected a 2D conv kernel (kh, kw, C_in, C_out), got shape {kernel.shape}")
  t = kernel.shape[0] if depth is None else depth
  if method == "mean":
    return jnp.broadcast_to(kernel / t, (t,) + kernel.shape)
  if method == "center":
    return jnp.zeros((t,) + kernel.shape, kernel.dtype).at[t // 2].set(kernel)
  raise ValueError(f"method={method!r}: expected 'mean' or 'center'")


def inflate_to_3d(variables: dict[str, Any], depth: Optional[int] = None,
                  method: str = "mean") -> dict[str, Any]:
  """Inflates every 4-d `kernel` leaf of 2D `variables` (conv kernels) to 3D
  with `inflate_kernel`; everything else (dense kernels, BatchNorm, biases) is
  returned unchanged. The result fits the same model built with `spatial_dims=3`."""
  flat = traverse_util.flatten_dict(variables)
  out = {k: (inflate_kernel(v, depth, method) if k[-1] == "kernel" and np.ndim(v) == 4 else v)
         for k, v in flat.items()}
  return traverse_util.unflatten_dict(out)


def apply_slicewise(apply_fn: Callable[[jax.Array], Any], volume: jax.Array) -> Any:
  """Applies a 2D network to every depth slice of `(N, D, H, W, C)`.

  `apply_fn` maps `(B, H, W, C)` images to an array (or pytree of arrays) with
  leading dim B, e.g. `lambda x: model.apply(variables, x)`. Returns the same
  structure with leading dims `(N, D)`: per-slice logits `(N, D, K)` or
  features; reduce over axis 1 for a volume-level output.
  """
  if volume.ndim != 5:
    raise ValueError(f"expected a volume (N, D, H, W, C), got shape {volume.shape}")
  n, d = volume.shape[:2]
  out = apply_fn(volume.reshape((n * d,) + volume.shape[2:]))
  return jax.tree_util.tree_map(lambda y: y.reshape((n, d) + y.shape[1:]), out)
