"""Convolution and upsampling building blocks shared by every model.

The models never call `flax.linen.Conv` directly: they go through `ConvND` and
`UpConv`, so that one switch (`kernels="auto"|"xla"|"pallas"`, defined and
checked in `medjax_kernels.dispatch`) picks the implementation of every
convolution in a network, by the platform the function is lowered for.

* ``"xla"``: the fastest pure-XLA formulation for the platform
  (`medjax_kernels.conv_xla`).
* ``"pallas"``: the fused Pallas kernels of `medjax_kernels` (3D only); lowered
  for CPU they run in the Pallas interpreter, which is for correctness checks,
  not speed.
* ``"auto"``: Pallas when the function is lowered for GPU/TPU, XLA on CPU.

Parameters are laid out as in `flax.linen.Conv` (`kernel` of shape
`(*window, C_in, C_out)`, `bias` of shape `(C_out,)`), so parameter counts and
checkpoints do not depend on the implementation.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from medjax import spatial
from medjax_kernels import conv_xla as _conv_xla
from medjax_kernels.conv3d import conv3d as _conv3d
from medjax_kernels.conv3d.api import is_explicit_padding
from medjax_kernels.dispatch import check_kernels

Activation = Optional[Union[str, Callable[[jax.Array], jax.Array]]]


def _as_tuple(value: Union[int, Sequence[int]], n: int) -> tuple[int, ...]:
  if isinstance(value, int):
    return (value,) * n
  value = tuple(value)
  if len(value) != n:
    raise ValueError(f"expected {n} values, got {value}")
  return value


def apply_activation(x: jax.Array, activation: Activation,
                     prelu_slope: Optional[jax.Array] = None) -> jax.Array:
  """Applies a named activation ("relu", "leaky_relu", "prelu") or a callable."""
  if activation is None:
    return x
  if callable(activation):
    return activation(x)
  if activation == "relu":
    return jax.nn.relu(x)
  if activation == "leaky_relu":
    return jax.nn.leaky_relu(x, 0.01)
  if activation == "prelu":
    return jnp.where(x >= 0, x, prelu_slope.astype(x.dtype) * x)
  raise ValueError(f"activation={activation!r}: expected relu, leaky_relu or prelu")


def conv_xla(x: jax.Array, kernel: jax.Array, *, strides: Sequence[int],
             padding: str) -> jax.Array:
  """Channels-last N-d convolution with the fastest pure-XLA formulation.

  Equal to `lax.conv_general_dilated` (forward and gradients). When lowered for
  CPU it runs `medjax_kernels.conv_xla.conv_fast_cpu`: a `jax.custom_vjp`
  whose forward pass, input gradient and weight gradient each use the
  formulation (im2col / shifted matmuls / XLA conv) measured fastest for the
  channel counts (2x faster fwd+bwd on the 3D U-Net layers, see
  `benchmarks/RESULTS.md`); on GPU/TPU it is `lax.conv_general_dilated`.
  """
  return _conv_xla.conv_fast(x, kernel.astype(x.dtype), tuple(strides), padding)


def conv(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array] = None, *,
         strides: Sequence[int], padding: str, activation: Activation = None,
         residual: Optional[jax.Array] = None,
         prelu_slope: Optional[jax.Array] = None,
         kernels: str = "auto") -> jax.Array:
  """`activation(conv(x, kernel) + bias + residual)` with the chosen implementation.

  Args:
    x: `(N, *S, C_in)`.
    kernel: `(*window, C_in, C_out)`.
    bias: `(C_out,)` or None.
    strides: one per spatial dim.
    padding: "SAME", "VALID" or one `(lo, hi)` pair per spatial dim.
    residual: optional `(N, *S_out, C_out)` added before the activation.
    kernels: "auto", "xla" or "pallas".
  Returns:
    `(N, *S_out, C_out)`.

  A 3D convolution under a `medjax.spatial` partition works on depth slabs: with
  "manual" slabs `x` is this device's slab (its halo is fetched from the
  neighbouring devices first), with "auto" the output is annotated as depth-sharded.
  """
  check_kernels(kernels)
  nd = x.ndim - 2
  if nd == 3:
    x, padding = spatial.conv_input(x, kernel.shape[:3], strides, padding)
  return spatial.constrain(_conv(x, kernel, bias, strides=strides, padding=padding,
                                 activation=activation, residual=residual,
                                 prelu_slope=prelu_slope, kernels=kernels))


def _conv(x, kernel, bias, *, strides, padding, activation, residual, prelu_slope, kernels):
  nd = x.ndim - 2
  if kernels != "xla" and _fusable_3d(nd, strides, padding):
    return _conv3d_fused(x, kernel, bias, strides=strides, padding=padding,
                         activation=activation, residual=residual,
                         prelu_slope=prelu_slope, kernels=kernels)
  # 2D/1D convs, mixed strides: XLA (cuDNN and the TPU emitter already fuse
  # bias+activation into 2D convs well; the Pallas kernels are 3D only).
  y = conv_xla(x, kernel, strides=strides, padding=padding)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  if residual is not None:
    y = y + residual.astype(y.dtype)
  return apply_activation(y, activation, prelu_slope)


def _fusable_3d(nd: int, strides: Sequence[int], padding: str) -> bool:
  """What `medjax_kernels.conv3d` covers: 3D, one stride 1 or 2, SAME/VALID/explicit."""
  strides = tuple(strides)
  return (nd == 3 and len(set(strides)) == 1 and strides[0] in (1, 2)
          and (padding in ("SAME", "VALID") or is_explicit_padding(padding)))


def _conv3d_fused(x, kernel, bias, *, strides, padding, activation, residual,
                  prelu_slope, kernels):
  """3D conv through `medjax_kernels.conv3d`, which picks by the lowering
  platform ("auto": Pallas on GPU/TPU, the fast XLA path on CPU; "pallas": the
  kernel, in the slow Pallas interpreter when lowered for CPU)."""
  named = activation is None or isinstance(activation, str)
  y = _conv3d(x, kernel.astype(x.dtype), bias, activation=activation if named else None,
              prelu_slope=prelu_slope, residual=residual, stride=int(strides[0]),
              padding=padding, kernels=kernels)
  return y if named else apply_activation(y, activation)


class ConvND(nn.Module):
  """N-d convolution (+bias, +residual, +activation) routed through `conv`.

  Attributes:
    features: output channels.
    kernel_size: window size, an int (same for every dim) or a tuple.
    strides: stride, an int or a tuple.
    padding: "SAME" or "VALID".
    spatial_dims: 2 or 3 (1 also works).
    activation: None, "relu", "leaky_relu", "prelu" (one learned slope per
      channel, initialised at 0.25 as in He et al. 2015) or a callable.
  """
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  padding: str = "SAME"
  spatial_dims: int = 3
  use_bias: bool = True
  activation: Activation = None
  kernels: str = "auto"
  dtype: Optional[jnp.dtype] = None
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array, residual: Optional[jax.Array] = None) -> jax.Array:
    nd = self.spatial_dims
    window = _as_tuple(self.kernel_size, nd)
    strides = _as_tuple(self.strides, nd)
    kernel = self.param("kernel", self.kernel_init, window + (x.shape[-1], self.features))
    bias = (self.param("bias", nn.initializers.zeros, (self.features,))
            if self.use_bias else None)
    slope = (self.param("prelu_slope", nn.initializers.constant(0.25), (self.features,))
             if self.activation == "prelu" else None)
    if self.dtype is not None:
      x = x.astype(self.dtype)
    return conv(x, kernel, bias, strides=strides, padding=self.padding.upper(),
                activation=self.activation, residual=residual, prelu_slope=slope,
                kernels=self.kernels)


def upconv2x(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array] = None) -> jax.Array:
  """Transposed convolution whose window equals its stride (2x..x2 for U-Net), as one matmul.

  With window == stride the output blocks do not overlap, so every input voxel
  writes its own block: `y[n, f0*i+a, f1*j+b, f2*k+c, o] = sum_ci x[n,i,j,k,ci] *
  kernel[f0-1-a, f1-1-b, f2-1-c, ci, o]` (the window flipped, as lax applies it) with `(f0, f1, f2) = kernel.shape[:3]` (e.g. 2x2x2, or
  1x2x2 for the in-plane-only levels of anisotropic volumes). That is one
  `(N*S, C_in) @ (C_in, f0*f1*f2*C_out)` matmul and a depth-to-space reshape,
  exactly equal to `lax.conv_transpose(x, kernel, window, "VALID")` (flax
  `ConvTranspose` layout), and its gradient is again two matmuls instead of
  XLA's slow transposed-convolution gradient.

  Args:
    x: `(N, *S, C_in)`; kernel: `window + (C_in, C_out)`; bias `(C_out,)`.
  Returns:
    `(N, *(window*S), C_out)`.
  """
  nd = x.ndim - 2
  factors = tuple(kernel.shape[:nd])
  cin, cout = kernel.shape[-2:]
  # lax.conv_transpose (transpose_kernel=False), hence flax, applies the window flipped
  kernel = kernel[(slice(None, None, -1),) * nd]
  # (C_in, f0, .., fd, C_out) -> (C_in, prod(f) * C_out)
  w = jnp.moveaxis(kernel, nd, 0).reshape(cin, -1).astype(x.dtype)
  y = jnp.dot(x.reshape(-1, cin), w, preferred_element_type=jnp.float32).astype(x.dtype)
  n, spatial = x.shape[0], x.shape[1:-1]
  y = y.reshape((n,) + spatial + factors + (cout,))
  # interleave: (N, S1, S2, S3, f1, f2, f3, C) -> (N, S1, f1, S2, f2, S3, f3, C)
  perm = [0]
  for i in range(nd):
    perm += [1 + i, 1 + nd + i]
  perm.append(1 + 2 * nd)
  y = y.transpose(perm).reshape((n,) + tuple(f * s for f, s in zip(factors, spatial)) + (cout,))
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y


class UpConv(nn.Module):
  """Upsampling by a transposed convolution with window == stride (see `upconv2x`).

  Attributes:
    features: output channels.
    factors: upsampling factor per spatial dim (default 2 in every dim).
  """
  features: int
  spatial_dims: int = 3
  use_bias: bool = True
  kernels: str = "auto"
  kernel_init: Callable = nn.initializers.lecun_normal()
  factors: Optional[Sequence[int]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nd = self.spatial_dims
    factors = _as_tuple(2 if self.factors is None else self.factors, nd)
    kernel = self.param("kernel", self.kernel_init, factors + (x.shape[-1], self.features))
    bias = (self.param("bias", nn.initializers.zeros, (self.features,))
            if self.use_bias else None)
    check_kernels(self.kernels)
    if nd == 3:
      spatial.record_block(x.shape[1], 1)  # window == stride: each slab alone
    return spatial.constrain(upconv2x(x, kernel, bias))


def max_pool(x: jax.Array, spatial_dims: int, window: Union[int, Sequence[int]] = 2) -> jax.Array:
  """Non-overlapping max pooling by `window` (an int or one per spatial dim)."""
  w = _as_tuple(window, spatial_dims)
  if spatial_dims == 3:
    spatial.record_block(x.shape[1], w[0])  # each depth slab alone if it holds whole windows
  return nn.max_pool(x, w, strides=w, padding="VALID")


def center_crop(x: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
  """Crops the spatial dims of `(N, *S, C)` to `spatial_shape` around the centre."""
  starts = [(s - t) // 2 for s, t in zip(x.shape[1:-1], spatial_shape)]
  if any(s < 0 for s in starts):
    raise ValueError(f"cannot crop {x.shape[1:-1]} to larger {tuple(spatial_shape)}")
  slices = tuple(slice(a, a + t) for a, t in zip(starts, spatial_shape))
  return x[(slice(None),) + slices + (slice(None),)]


def conv_norm_act(x: jax.Array, features: int, kernel_size: Union[int, Sequence[int]], *,
                  train: bool, norm: Optional[str] = None, bn_axis_name: Optional[str] = None,
                  relu: bool = True, conv_name: str, norm_name: str, spatial_dims: int = 3,
                  strides: Union[int, Sequence[int]] = 1, padding: str = "SAME",
                  kernels: str = "auto", dtype: Optional[jnp.dtype] = None,
                  norm_epsilon: Optional[float] = None) -> jax.Array:
  """conv -> norm -> ReLU, the unit every conv model repeats.

  Call it inside a `nn.compact` method: the `ConvND` (named `conv_name`) and
  the norm (named `norm_name`) become submodules of the caller. Without a norm
  the conv has a bias and the ReLU fuses into it; with one, the conv has no
  bias (the norm's offset replaces it). `dtype` is the compute dtype of the
  conv and the norm's output (parameters stay float32; None: the input's);
  `norm_epsilon` the norm's variance epsilon (None: flax's default).
  """
  layer = normalization(norm, bn_axis_name, name=norm_name, dtype=dtype, epsilon=norm_epsilon)
  fuse = layer is None
  x = ConvND(features, kernel_size, strides=strides, padding=padding.upper(),
             spatial_dims=spatial_dims, use_bias=fuse,
             activation="relu" if (fuse and relu) else None, kernels=kernels,
             dtype=dtype, name=conv_name)(x)
  if not fuse:
    x = layer(x, use_running_average=not train) if norm == "batch" else layer(x)
    if relu:
      x = jax.nn.relu(x)
  return x


def normalization(norm: Optional[str], axis_name: Optional[str] = None,
                  name: Optional[str] = None, dtype: Optional[jnp.dtype] = None,
                  epsilon: Optional[float] = None) -> Optional[nn.Module]:
  """None, "batch" (statistics synchronised over `axis_name`) or "instance".

  `dtype` is the output dtype (None: promoted from input and float32
  parameters); flax computes the statistics in float32 either way. `epsilon`
  is added to the variance (None: flax's default, 1e-5 for batch norm and
  1e-6 for instance norm; PyTorch's `InstanceNorm3d` uses 1e-5). Under a
  "manual" `medjax.spatial` partition both average their statistics over the
  depth slabs too, so they are the statistics of the whole patch.
  """
  eps = {} if epsilon is None else {"epsilon": float(epsilon)}
  if norm is None or str(norm).lower() == "none":  # "None" from a command-line flag
    return None
  if norm == "batch":
    return nn.BatchNorm(momentum=0.9, axis_name=spatial.norm_axis_name(axis_name), dtype=dtype,
                        name=name, **eps)
  if norm == "instance":
    return nn.GroupNorm(num_groups=None, group_size=1, dtype=dtype, name=name,
                        axis_name=spatial.norm_axis_name(None), **eps)
  raise ValueError(f"norm={norm!r}: expected None, 'batch' or 'instance'")
