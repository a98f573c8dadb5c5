"""Pure-JAX definition of the fused 3D convolution: the readable reference.

`activation(conv3d(x, w) + b + residual)`: the building block of 3D U-Net
(Cicek et al. 2016: 3x3x3 conv + bias + ReLU) and V-Net (Milletari et al.
2016: 5x5x5 convs + PReLU with the stage input added back, 2x2x2 stride-2
convs to go down). XLA computes it as separate ops; the Pallas kernels fuse it.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

ACTIVATIONS = (None, "relu", "leaky_relu", "prelu")
LEAKY_RELU_SLOPE = 0.01


def activate(z: jax.Array, activation: Optional[str], prelu_slope=None) -> jax.Array:
  """relu, leaky_relu (slope 0.01), prelu (per-channel slope) or identity."""
  if activation is None:
    return z
  if activation == "relu":
    return jnp.maximum(z, 0)
  if activation == "leaky_relu":
    return jnp.where(z >= 0, z, LEAKY_RELU_SLOPE * z)
  if activation == "prelu":
    return jnp.where(z >= 0, z, prelu_slope.astype(z.dtype) * z)
  raise ValueError(f"activation={activation!r}: expected one of {ACTIVATIONS}")


def conv3d(x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *,
           activation: Optional[str] = None, prelu_slope: Optional[jax.Array] = None,
           residual: Optional[jax.Array] = None, stride: int = 1, padding="SAME",
           kernels: str = "auto", interpret: bool = False,
           backend: Optional[str] = None) -> jax.Array:
  """`activation(conv(x, w, stride, padding) + b + residual)`, float32 accumulation.

  Args:
    x: `(N, D, H, W, C_in)`.
    w: `(kd, kh, kw, C_in, C_out)`.
    b: `(C_out,)` or None.
    activation: None, "relu", "leaky_relu" or "prelu" (then `prelu_slope`, `(C_out,)`).
    residual: `(N, D_out, H_out, W_out, C_out)` added before the activation, or None.
    stride: 1 or 2 (every spatial dim).
    padding: "SAME", "VALID" (XLA's conventions) or three `(lo, hi)` pairs.
    kernels, interpret, backend: ignored (same signature as `medjax_kernels.conv3d`).
  Returns:
    `(N, D_out, H_out, W_out, C_out)` in `x.dtype`.
  """
  del kernels, interpret, backend
  z = lax.conv_general_dilated(
      x, w.astype(x.dtype), (stride,) * 3, padding,
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      preferred_element_type=jnp.float32)
  if b is not None:
    z = z + b.astype(jnp.float32)
  if residual is not None:
    z = z + residual.astype(jnp.float32)
  return activate(z, activation, prelu_slope).astype(x.dtype)
