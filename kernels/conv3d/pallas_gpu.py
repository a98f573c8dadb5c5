"""Fused 3D convolution as a Pallas GPU (Triton) kernel.

Computes the stride-1 VALID convolution of an already padded input, plus bias,
plus residual, then the activation, all in registers, with one store:
`y = act(sum_t x[o + t] @ w[t] + b + r)` (the conv + bias + PReLU + residual
unit of V-Net, Milletari et al. 2016; conv + bias + ReLU of 3D U-Net, Cicek
et al. 2016). Padding, stride 2 (space-to-depth) and channel padding happen in
XLA before the call (see `api.py`).

The flat-shift trick: the padded input `(N, Dp, Hp, Wp, C)` is flattened to
`(N, Dp*Hp*Wp, C)`, and outputs are computed on the same padded grid,
`q = d*Hp*Wp + h*Wp + w`. The input row of output `q` for tap `(a, b, c)` is
`q + a*Hp*Wp + b*Wp + c`: a constant shift per tap, so each tap is one
contiguous `(BLOCK_Q, C_in)` load and a `(BLOCK_Q, C_in) @ (C_in, BLOCK_CO)`
dot accumulated in float32. Rows with `h >= H_out` or `w >= W_out` are
computed and thrown away (`(Hp*Wp)/(H_out*W_out) - 1`, ~6 % at 64^2, kernel 3).

Grid: (N, Q blocks, C_out blocks). Triton dots need every dim >= 16 and
powers of two, so channels are padded to a power of two >= 16 here.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from medjax_kernels.conv3d import config as config_lib
from medjax_kernels.conv3d.reference import LEAKY_RELU_SLOPE


def _epilogue(acc, b_ref, r_ref, s_ref, activation):
  """bias + residual + activation on the float32 accumulator tile."""
  if b_ref is not None:
    acc = acc + b_ref[...].astype(jnp.float32)
  if r_ref is not None:
    acc = acc + r_ref[...].astype(jnp.float32)
  if activation == "relu":
    acc = jnp.maximum(acc, 0.0)
  elif activation == "leaky_relu":
    acc = jnp.where(acc >= 0, acc, LEAKY_RELU_SLOPE * acc)
  elif activation == "prelu":
    acc = jnp.where(acc >= 0, acc, s_ref[...].astype(jnp.float32) * acc)
  return acc


def conv_kernel(x_ref, w_ref, *refs, shifts: tuple[int, ...], dims: tuple[int, ...],
                block_q: int,
                has_bias: bool, has_residual: bool, activation: Optional[str]):
  """One (BLOCK_Q, BLOCK_CO) output tile.

  Refs: x `(L, C_in)` (one batch element, flattened padded volume), w
  `(T, C_in, BLOCK_CO)`, [b `(1, BLOCK_CO)`], [r `(BLOCK_Q, BLOCK_CO)`],
  [slope `(1, BLOCK_CO)`], out `(BLOCK_Q, BLOCK_CO)`.
  """
  refs = list(refs)
  o_ref = refs.pop()
  b_ref = refs.pop(0) if has_bias else None
  r_ref = refs.pop(0) if has_residual else None
  s_ref = refs.pop(0) if activation == "prelu" else None
  q0 = pl.program_id(1) * block_q
  acc = jnp.zeros(o_ref.shape, jnp.float32)
  if len(shifts) <= 27:  # unrolled: constant offsets
    for t, shift in enumerate(shifts):
      xt = x_ref[pl.ds(q0 + shift, block_q), :]
      acc += jnp.dot(xt, w_ref[t], preferred_element_type=jnp.float32)
  else:  # 5x5x5: a loop keeps compile time down; the shift is computed from the tap
    kd_, hpwp, wp, kh, kw = dims

    def tap(t, acc):
      a, rem = jax.lax.div(t, kh * kw), jax.lax.rem(t, kh * kw)
      shift = a * hpwp + jax.lax.div(rem, kw) * wp + jax.lax.rem(rem, kw)
      xt = x_ref[pl.ds(q0 + shift, block_q), :]
      return acc + jnp.dot(xt, w_ref[t], preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, len(shifts), tap, acc)
  o_ref[...] = _epilogue(acc, b_ref, r_ref, s_ref, activation).astype(o_ref.dtype)


def _pad_axis(a, axis, size):
  if a.shape[axis] == size:
    return a
  pads = [(0, 0)] * a.ndim
  pads[axis] = (0, size - a.shape[axis])
  return jnp.pad(a, pads)


@functools.partial(jax.jit, static_argnames=("activation", "interpret", "config"))
def conv3d_valid(xp: jax.Array, w: jax.Array, b: Optional[jax.Array] = None,
                 residual: Optional[jax.Array] = None, prelu_slope: Optional[jax.Array] = None,
                 *, activation: Optional[str] = None, interpret: bool = False,
                 config: Optional[config_lib.GpuConfig] = None) -> jax.Array:
  """`act(conv_valid_stride1(xp, w) + b + residual)` on GPU (Triton).

  Args:
    xp: padded input `(N, Dp, Hp, Wp, C_in)`.
    w: `(kd, kh, kw, C_in, C_out)`.
    b, prelu_slope: `(C_out,)` or None; residual: `(N, Do, Ho, Wo, C_out)` or None.
  Returns:
    `(N, Do, Ho, Wo, C_out)` with `Do = Dp - kd + 1` etc., in `xp.dtype`.
  """
  n, dp, hp, wp, c_in = xp.shape
  kd, kh, kw, _, c_out = w.shape
  do, ho, wo = dp - kd + 1, hp - kh + 1, wp - kw + 1
  q_valid = do * hp * wp  # output rows on the padded grid
  cfg = config or config_lib.gpu_config(c_in, c_out, q_valid, xp.dtype.itemsize)
  c_in_p = max(16, config_lib.next_pow2(c_in))
  c_out_p = pl.cdiv(max(16, config_lib.next_pow2(c_out)), cfg.block_co) * cfg.block_co
  n_q = pl.cdiv(q_valid, cfg.block_q)
  q_total = n_q * cfg.block_q
  shifts = tuple(a * hp * wp + bb * wp + c
                 for a in range(kd) for bb in range(kh) for c in range(kw))
  length = q_total + shifts[-1]

  x_flat = _pad_axis(_pad_axis(xp, 4, c_in_p).reshape(n, dp * hp * wp, c_in_p), 1, length)
  w_flat = _pad_axis(_pad_axis(w.astype(xp.dtype), 3, c_in_p), 4, c_out_p)
  w_flat = w_flat.reshape(kd * kh * kw, c_in_p, c_out_p)
  args = [x_flat, w_flat]
  in_specs = [
      pl.BlockSpec((None, length, c_in_p), lambda i, q, co: (i, 0, 0)),
      pl.BlockSpec((kd * kh * kw, c_in_p, cfg.block_co), lambda i, q, co: (0, 0, co)),
  ]
  vec_spec = pl.BlockSpec((1, cfg.block_co), lambda i, q, co: (0, co))
  if b is not None:
    args.append(_pad_axis(b.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)
  if residual is not None:
    r = jnp.pad(residual, ((0, 0), (0, 0), (0, hp - ho), (0, wp - wo), (0, c_out_p - c_out)))
    args.append(_pad_axis(r.reshape(n, q_valid, c_out_p), 1, q_total))
    in_specs.append(pl.BlockSpec((None, cfg.block_q, cfg.block_co), lambda i, q, co: (i, q, co)))
  if activation == "prelu":
    args.append(_pad_axis(prelu_slope.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)

  kernel = functools.partial(
      conv_kernel, shifts=shifts, dims=(kd, hp * wp, wp, kh, kw), block_q=cfg.block_q,
      has_bias=b is not None,
      has_residual=residual is not None, activation=activation)
  y = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((n, q_total, c_out_p), xp.dtype),
      grid=(n, n_q, c_out_p // cfg.block_co),
      in_specs=in_specs,
      out_specs=pl.BlockSpec((None, cfg.block_q, cfg.block_co), lambda i, q, co: (i, q, co)),
      compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
      interpret=interpret,
      name="medjax_conv3d",
  )(*args)
  y = y[:, :q_valid].reshape(n, do, hp, wp, c_out_p)
  return y[:, :, :ho, :wo, :c_out]
