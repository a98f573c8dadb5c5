"""Fused 3D convolution as a Pallas TPU (Mosaic) kernel.

Same computation and flat-shift trick as `pallas_gpu.py` (read that docstring
first), laid out for the TPU: one program per (batch element, output depth
slice, C_out block). The input comes in as `kd` depth planes (the same array
passed `kd` times with index maps `d + a`), each flattened to
`(Hp*Wp + halo, C_in)` rows and held in VMEM; for every tap `(a, b, c)` the
program slices rows `[b*Wp + c, b*Wp + c + Q)` of plane `a` and does a
`(Q, C_in) @ (C_in, BLOCK_CO)` MXU matmul into a float32 accumulator, then
bias + residual + activation and one store of the `(Q, BLOCK_CO)` tile
(`Q = H_out*Wp` rounded up to a multiple of 8 sublanes).

Limits: a whole padded plane per program must fit in VMEM (`kd` planes, double
buffered): fine for the U-Net/V-Net layers up to ~128^2 x 64 channels; wider
layers need a row-tiled variant with an overlapping halo (`pl.Element` block
dims) that is not written yet.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from medjax_kernels.conv3d import config as config_lib
from medjax_kernels.conv3d.pallas_gpu import _epilogue, _pad_axis


def conv_kernel(*refs, kd: int, row_shifts: tuple[int, ...], q_rows: int,
                has_bias: bool, has_residual: bool, activation: Optional[str]):
  """Refs: kd planes `(L, C_in)`, w `(kd, kh*kw, C_in, BLOCK_CO)`, [b], [r], [slope], out."""
  refs = list(refs)
  o_ref = refs.pop()
  planes, w_ref, rest = refs[:kd], refs[kd], refs[kd + 1:]
  b_ref = rest.pop(0) if has_bias else None
  r_ref = rest.pop(0) if has_residual else None
  s_ref = rest.pop(0) if activation == "prelu" else None
  acc = jnp.zeros(o_ref.shape, jnp.float32)
  for a in range(kd):
    for t, shift in enumerate(row_shifts):
      xt = planes[a][pl.ds(shift, q_rows), :]
      acc += jnp.dot(xt, w_ref[a, t], preferred_element_type=jnp.float32)
  o_ref[...] = _epilogue(acc, b_ref, r_ref, s_ref, activation).astype(o_ref.dtype)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _vmem_limit(plane_elems: int, w_elems: int, tile_elems: int, itemsize: int) -> int:
  """Double-buffered blocks + the float32 accumulator, with headroom; at least
  the 32 MiB default, at most 64 MiB (a v7x core's VMEM)."""
  need = 2 * (plane_elems + w_elems + tile_elems) * itemsize + tile_elems * 4
  return int(min(max(32 << 20, 1.5 * need), 64 << 20))


@functools.partial(jax.jit, static_argnames=("activation", "interpret", "config"))
def conv3d_valid(xp: jax.Array, w: jax.Array, b: Optional[jax.Array] = None,
                 residual: Optional[jax.Array] = None, prelu_slope: Optional[jax.Array] = None,
                 *, activation: Optional[str] = None, interpret: bool = False,
                 config: Optional[config_lib.TpuConfig] = None) -> jax.Array:
  """`act(conv_valid_stride1(xp, w) + b + residual)` on TPU (Mosaic).

  Args/returns as `pallas_gpu.conv3d_valid`.
  """
  n, dp, hp, wp, c_in = xp.shape
  kd, kh, kw, _, c_out = w.shape
  do, ho, wo = dp - kd + 1, hp - kh + 1, wp - kw + 1
  c_in_p = _round_up(c_in, 8)
  c_out_p = _round_up(c_out, 8) if c_out <= 128 else _round_up(c_out, 128)
  cfg = config or config_lib.tpu_config(c_out_p)
  q_rows = _round_up(ho * wp, 8)
  row_shifts = tuple(bb * wp + c for bb in range(kh) for c in range(kw))
  length = _round_up(q_rows + row_shifts[-1], 8)

  planes = _pad_axis(_pad_axis(xp, 4, c_in_p).reshape(n, dp, hp * wp, c_in_p), 2, length)
  w_p = _pad_axis(_pad_axis(w.astype(xp.dtype), 3, c_in_p), 4, c_out_p)
  w_p = w_p.reshape(kd, kh * kw, c_in_p, c_out_p)
  args = [planes] * kd + [w_p]
  in_specs = [pl.BlockSpec((None, None, length, c_in_p),
                           lambda i, d, co, a=a: (i, d + a, 0, 0)) for a in range(kd)]
  in_specs.append(pl.BlockSpec((kd, kh * kw, c_in_p, cfg.block_co),
                               lambda i, d, co: (0, 0, 0, co)))
  vec_spec = pl.BlockSpec((1, cfg.block_co), lambda i, d, co: (0, co))
  tile_spec = pl.BlockSpec((None, None, q_rows, cfg.block_co), lambda i, d, co: (i, d, 0, co))
  if b is not None:
    args.append(_pad_axis(b.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)
  if residual is not None:
    r = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (0, wp - wo), (0, c_out_p - c_out)))
    args.append(_pad_axis(r.reshape(n, do, ho * wp, c_out_p), 2, q_rows))
    in_specs.append(tile_spec)
  if activation == "prelu":
    args.append(_pad_axis(prelu_slope.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)

  kernel = functools.partial(
      conv_kernel, kd=kd, row_shifts=row_shifts, q_rows=q_rows, has_bias=b is not None,
      has_residual=residual is not None, activation=activation)
  y = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((n, do, q_rows, c_out_p), xp.dtype),
      grid=(n, do, c_out_p // cfg.block_co),
      in_specs=in_specs,
      out_specs=tile_spec,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel"),
          vmem_limit_bytes=_vmem_limit(kd * length * c_in_p, w_p.size // (c_out_p // cfg.block_co),
                                       q_rows * cfg.block_co * (2 if residual is not None else 1),
                                       xp.dtype.itemsize)),
      interpret=interpret,
      name="medjax_conv3d",
  )(*args)
  y = y[:, :, :ho * wp].reshape(n, do, ho, wp, c_out_p)
  return y[:, :, :, :wo, :c_out]
