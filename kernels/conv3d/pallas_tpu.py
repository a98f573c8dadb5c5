"""Fused 3D convolution as a Pallas TPU (Mosaic) kernel, halo-blocked.

Same computation and flat-shift trick as `pallas_gpu.py` (read that docstring
first), laid out for the TPU. Each padded depth plane is flattened to rows
`(Hp*Wp, C_in)`; output row `q = h*Wp + w` of output plane `d` is
`sum_{a,b,c} x[d + a, q + b*Wp + c] @ w[a, b, c]`, so for every tap the program
takes a row-shifted slice of a plane and does one `(TQ, C_in) @ (C_in, BLOCK_CO)`
MXU matmul into a float32 accumulator, then bias + residual + activation and one
store of the `(TQ, BLOCK_CO)` tile.

Tiling (halo blocks): the grid is `(C_out blocks, N, depth tiles, row tiles)`;
a program computes `TD` output planes x `TQ` output rows and brings into VMEM
only the input window it reads: `TD + kd - 1` planes x `TQ + halo` rows, with
`halo = (kh-1)*Wp + kw - 1` rounded up to 8 sublanes. Consecutive windows
overlap (by `kd - 1` planes and `halo` rows); they are expressed as element-
offset block dims (`pl.Element`), so Pallas' pipeline double-buffers them like
any block. `TQ` and `TD` come from `plan`: the largest tiles whose VMEM
footprint (double-buffered window, weights, output and residual tiles, the
float32 accumulator, Mosaic's lane padding of channels to 128 included) stays
within `VMEM_BUDGET` (plus the weight block). Whole padded planes do not fit:
the 128^3 32->32 and 96^3 64->64 U-Net layers then exceed a TPU v5e's scoped
VMEM at compile time (`CompileTimeScopedVmemOom`; `python -m benchmarks.compile_check
--target tpu-v5e`, `benchmarks/RESULTS.md`). The weight block is the slowest grid
axis, so it stays resident while the input streams past it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from medjax_kernels.conv3d import config as config_lib
from medjax_kernels.conv3d.pallas_gpu import _epilogue, _pad_axis, _preactivation

# VMEM a program may plan for besides its weight block (bytes): half of the 32 MiB
# scoped limit the kernel asks for at least, leaving room for Mosaic's temporaries.
VMEM_BUDGET = 16 << 20
# Output rows per program at most: bounds Mosaic's unrolled matmul code per tap
# (and so compile time) once a tile is large enough to keep the MXU busy.
MAX_BLOCK_ROWS = 2048


def conv_kernel(x_ref, w_ref, *refs, kd: int, td: int, row_shifts: tuple[int, ...],
                block_rows: int, has_bias: bool, has_residual: bool,
                activation: Optional[str], save_preactivation: bool = False):
  """Refs: x window `(1, TD + kd - 1, TQ + halo, C_in)`, w `(kd, kh*kw, C_in, BLOCK_CO)`,
  [b `(1, BLOCK_CO)`], [r `(TD, TQ, BLOCK_CO)`], [slope `(1, BLOCK_CO)`],
  out `(TD, TQ, BLOCK_CO)`, [pre-activation out, same tile]."""
  refs = list(refs)
  z_ref = refs.pop() if save_preactivation else None
  o_ref = refs.pop()
  b_ref = refs.pop(0) if has_bias else None
  r_ref = refs.pop(0) if has_residual else None
  s_ref = refs.pop(0) if activation == "prelu" else None

  def plane(t, carry):
    acc = jnp.zeros(o_ref.shape[1:], jnp.float32)
    for a in range(kd):
      for tap, shift in enumerate(row_shifts):
        xt = x_ref[0, t + a, pl.ds(shift, block_rows), :]
        acc += jnp.dot(xt, w_ref[a, tap], preferred_element_type=jnp.float32)
    r_t = None if r_ref is None else r_ref.at[t]
    if z_ref is None:
      o_ref[t] = _epilogue(acc, b_ref, r_t, s_ref, activation).astype(o_ref.dtype)
    else:
      z = _preactivation(acc, b_ref, r_t)
      z_ref[t] = z.astype(z_ref.dtype)
      o_ref[t] = _epilogue(z, None, None, s_ref, activation).astype(o_ref.dtype)
    return carry

  if td == 1:
    plane(0, 0)
  else:
    lax.fori_loop(0, td, plane, 0)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


@dataclasses.dataclass(frozen=True)
class Plan:
  """Tiles of one call: `block_depth` (TD) output planes x `block_rows` (TQ) output
  rows per program, `halo` extra input rows, `vmem_bytes` the planned footprint."""
  block_depth: int
  block_rows: int
  n_depth: int
  n_rows: int
  halo: int
  vmem_bytes: int


def _lanes(c: int) -> int:
  return _round_up(c, 128)  # Mosaic pads the minor (lane) dim of VMEM tiles to 128


def vmem_bytes(td: int, tq: int, halo: int, kd: int, taps: int, c_in: int, block_co: int,
               itemsize: int, has_residual: bool, tiles_out: int = 1) -> int:
  """VMEM footprint of one program: double-buffered input window, weight block and
  output (`tiles_out`: 2 with the pre-activation) + residual tiles, the float32
  accumulator and one shifted tap slice."""
  window = (td + kd - 1) * (tq + halo) * _lanes(c_in) * itemsize
  weights = kd * taps * _round_up(c_in, 8) * _lanes(block_co) * itemsize
  tile = td * tq * _lanes(block_co) * itemsize
  return (2 * (window + weights + tile * (tiles_out + (1 if has_residual else 0)))
          + tq * _lanes(block_co) * 4 + tq * _lanes(c_in) * itemsize)


def plan(do: int, q_rows: int, halo: int, kd: int, taps: int, c_in: int, block_co: int,
         itemsize: int, has_residual: bool, block_rows: Optional[int] = None,
         block_depth: Optional[int] = None, tiles_out: int = 1) -> Plan:
  """The largest row tile (<= MAX_BLOCK_ROWS, balanced so the last tile is not mostly
  padding), then the largest depth tile dividing `do`, whose footprint without the
  (double-buffered) weight block fits `VMEM_BUDGET`;
  `block_rows` / `block_depth` force a tile (tests)."""
  # the weight block does not shrink with the tiles: budget the rest (V-Net's 5x5x5
  # 256-channel weights alone are 2 x 8 MiB in bfloat16)
  weights = 2 * kd * taps * _round_up(c_in, 8) * _lanes(block_co) * itemsize
  fits = lambda td, tq: vmem_bytes(td, tq, halo, kd, taps, c_in, block_co, itemsize,
                                   has_residual, tiles_out) - weights <= VMEM_BUDGET
  if block_rows is None:
    tq = _round_up(min(q_rows, MAX_BLOCK_ROWS), 8)
    while tq > 8 and not fits(1, tq):
      tq = _round_up(tq // 2, 8)
    n_rows = -(-q_rows // tq)
    tq = _round_up(-(-q_rows // n_rows), 8)
  else:
    tq = _round_up(block_rows, 8)
  n_rows = -(-q_rows // tq)
  if block_depth is None:
    # whole planes only: more planes per program cut the (kd-1)-plane re-reads
    td = 1
    if n_rows == 1:
      for cand in range(do, 0, -1):
        if do % cand == 0 and cand * tq <= MAX_BLOCK_ROWS and fits(cand, tq):
          td = cand
          break
  else:
    td = block_depth
  return Plan(td, tq, -(-do // td), n_rows, halo,
              vmem_bytes(td, tq, halo, kd, taps, c_in, block_co, itemsize, has_residual,
                         tiles_out))


def _vmem_limit(need: int) -> int:
  """1.5x the planned footprint, at least the 32 MiB default, at most 64 MiB (a
  v7x core's VMEM)."""
  return int(min(max(32 << 20, 1.5 * need), 64 << 20))


@functools.partial(jax.jit, static_argnames=("activation", "interpret", "config", "block_rows",
                                             "block_depth", "save_preactivation"))
def conv3d_valid(xp: jax.Array, w: jax.Array, b: Optional[jax.Array] = None,
                 residual: Optional[jax.Array] = None, prelu_slope: Optional[jax.Array] = None,
                 *, activation: Optional[str] = None, interpret: bool = False,
                 config: Optional[config_lib.TpuConfig] = None,
                 block_rows: Optional[int] = None,
                 block_depth: Optional[int] = None, save_preactivation: bool = False):
  """`act(conv_valid_stride1(xp, w) + b + residual)` on TPU (Mosaic), halo-blocked.

  Args/returns as `pallas_gpu.conv3d_valid` (with `save_preactivation`, the pair (output,
  pre-activation), both written by the kernel); `block_rows` / `block_depth` force the
  row and depth tiles (default: `plan`).
  """
  n, dp, hp, wp, c_in = xp.shape
  kd, kh, kw, _, c_out = w.shape
  do, ho, wo = dp - kd + 1, hp - kh + 1, wp - kw + 1
  c_in_p = _round_up(c_in, 8)
  c_out_p = _round_up(c_out, 8) if c_out <= 128 else _round_up(c_out, 128)
  cfg = config or config_lib.tpu_config(c_out_p)
  q_rows = ho * wp
  row_shifts = tuple(bb * wp + c for bb in range(kh) for c in range(kw))
  halo = _round_up(row_shifts[-1], 8)
  p = plan(do, q_rows, halo, kd, kh * kw, c_in_p, cfg.block_co, xp.dtype.itemsize,
           residual is not None, block_rows, block_depth, 2 if save_preactivation else 1)
  td, tq = p.block_depth, p.block_rows
  rows_out, planes_out = p.n_rows * tq, p.n_depth * td

  x = _pad_axis(xp, 4, c_in_p).reshape(n, dp, hp * wp, c_in_p)
  x = _pad_axis(_pad_axis(x, 2, rows_out + halo), 1, planes_out + kd - 1)
  w_p = _pad_axis(_pad_axis(w.astype(xp.dtype), 3, c_in_p), 4, c_out_p)
  w_p = w_p.reshape(kd, kh * kw, c_in_p, c_out_p)
  args = [x, w_p]
  in_specs = [
      # Mosaic: every block dim an element offset, or none (the batch dim is kept, size 1)
      pl.BlockSpec((pl.Element(1), pl.Element(td + kd - 1), pl.Element(tq + halo),
                    pl.Element(c_in_p)), lambda co, i, d, q: (i, d * td, q * tq, 0)),
      pl.BlockSpec((kd, kh * kw, c_in_p, cfg.block_co), lambda co, i, d, q: (0, 0, 0, co)),
  ]
  vec_spec = pl.BlockSpec((1, cfg.block_co), lambda co, i, d, q: (0, co))
  tile_spec = pl.BlockSpec((None, td, tq, cfg.block_co), lambda co, i, d, q: (i, d, q, co))
  if b is not None:
    args.append(_pad_axis(b.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)
  if residual is not None:
    r = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (0, wp - wo), (0, c_out_p - c_out)))
    r = _pad_axis(_pad_axis(r.reshape(n, do, q_rows, c_out_p), 2, rows_out), 1, planes_out)
    args.append(r)
    in_specs.append(tile_spec)
  if activation == "prelu":
    args.append(_pad_axis(prelu_slope.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)

  kernel = functools.partial(
      conv_kernel, kd=kd, td=td, row_shifts=row_shifts, block_rows=tq,
      has_bias=b is not None, has_residual=residual is not None, activation=activation,
      save_preactivation=save_preactivation)
  out = jax.ShapeDtypeStruct((n, planes_out, rows_out, c_out_p), xp.dtype)
  outs = pl.pallas_call(
      kernel,
      out_shape=(out, out) if save_preactivation else out,
      grid=(c_out_p // cfg.block_co, n, p.n_depth, p.n_rows),
      in_specs=in_specs,
      out_specs=(tile_spec, tile_spec) if save_preactivation else tile_spec,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel",) * 4,
          vmem_limit_bytes=_vmem_limit(p.vmem_bytes)),
      interpret=interpret,
      name="medjax_conv3d",
  )(*args)
  valid = lambda y: y[:, :do, :q_rows].reshape(n, do, ho, wp, c_out_p)[:, :, :, :wo, :c_out]
  return tuple(map(valid, outs)) if save_preactivation else valid(outs)
