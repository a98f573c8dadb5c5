"""Weight gradient of the fused 3D convolution as a Pallas GPU (Triton) kernel.

`dw[t, ci, co] = sum_{n, o} x[n, o + t - pad_lo, ci] * dz[n, o, co]`: for each tap, the
input rows the forward gathered (`pallas_gpu.tap_rows`, zero halo masked in-kernel)
transposed against the output gradient's rows, channels-last, in the input dtype with
float32 accumulation. XLA's own weight gradient is cuDNN's convBackwardFilter on NCDHW
transposes of x and dz, written out and read back (and in float32 for bfloat16 inputs);
this kernel reads x and dz once, in place (`benchmarks/RESULTS.md`, static roofline).

Work split: the batch is folded into the rows (`N * Do*Ho*Wo` output rows). A program
owns one group of `G` taps (the `kw` taps of one kernel row, whose gathered rows are one
row apart: the same cache lines), one `(BLOCK_CI, BLOCK_CO)` channel tile and one slice
of the rows. It loops over its rows `BLOCK_Q` at a time: one load of the `dz` tile, then
for each tap of the group a masked gather of the input tile and a `(BLOCK_CI, BLOCK_Q) @
(BLOCK_Q, BLOCK_CO)` dot into that tap's float32 accumulator (`G` accumulators live in
registers: `G * BLOCK_CI * BLOCK_CO / (32 * num_warps)` per thread). Programs write
float32 partial sums `(splits, T, C_in, C_out)`, which XLA adds up; `splits` is as many
as fill the GPU while the partial sums (written and read back) stay within
`PARTIAL_FRACTION` of the bytes of x and dz: deep layers, whose weights are as large as
their activations, take one slice. The row slices are the slowest grid axis, so the
programs reading the same rows of x and dz run together and share L2.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from medjax_kernels.conv3d import config as config_lib
from medjax_kernels.conv3d.pallas_gpu import (MAX_ROWS, Geometry, check_rows,
                                              dot_precision, gather_rows, output_origin,
                                              padded_channels, tap_rows)

KERNEL_NAME = "medjax_conv3d_dw"


@dataclasses.dataclass(frozen=True)
class WgradConfig:
  """Triton tiles of the weight gradient: rows per step (the dots' K), channel tiles,
  taps per program, warps, pipeline stages, and row slices per batch element."""
  block_q: int = 32
  block_ci: int = 32
  block_co: int = 32
  group: int = 3
  num_warps: int = 4
  num_stages: int = 3
  splits: int = 1


# Bytes of the operand tiles one pipelined step loads (G gathered x tiles + the dz tile):
# x 3 stages stays under the H100's 227 KiB of shared memory. At 48 KiB the 5-tap float32
# kernel of V-Net's 16-channel stage (128-row steps) spilled 92 B (compile check).
STEP_BYTES = 32 << 10
# Accumulator registers per thread the tile choice aims at (as the forward: `config.GPU_TILES`).
ACC_REGISTERS = 96
# The partial sums' traffic (write + read back, float32) at most this fraction of x + dz.
PARTIAL_FRACTION = 1 / 16


def wgrad_config(c_in: int, c_out: int, window: tuple[int, int, int], q_out: int,
                 dtype_bytes: int = 4, batch: int = 1, in_rows: int | None = None
                 ) -> WgradConfig:
  """Tiles for one weight gradient (channel counts before padding).

  * `group` = `kw` (one kernel row of taps per program);
  * channel tiles up to 64 x 64; warps 4, or 8 when the `group` accumulators would take
    more than `ACC_REGISTERS` registers per thread with 4;
  * `block_q` (the dots' K): the largest power of two <= 128 rows whose `G + 1` operand
    tiles (at the wider channel tile) fit `STEP_BYTES`;
  * `splits`: row slices (the batch folded into the rows), so the grid has
    `config.MIN_PROGRAMS` programs, at most as many as keep the partial sums within
    `PARTIAL_FRACTION` of the operands' bytes.
  """
  c_in_p, c_out_p = padded_channels(c_in), padded_channels(c_out)
  block_ci, block_co = min(c_in_p, 64), min(c_out_p, 64)
  group = window[2]
  num_warps = 4 if group * block_ci * block_co <= ACC_REGISTERS * 32 * 4 else 8
  block_q = 128
  step_bytes = lambda rows: (group + 1) * rows * max(block_ci, block_co) * dtype_bytes
  while block_q > 16 and step_bytes(block_q) > STEP_BYTES:
    block_q //= 2
  block_q = min(block_q, max(16, config_lib.next_pow2(q_out)))
  taps = window[0] * window[1] * window[2]
  rows = batch * q_out
  programs = (taps // group) * (c_in_p // block_ci) * (c_out_p // block_co)
  in_rows = q_out if in_rows is None else in_rows  # x's voxels (more with a stride)
  operand_bytes = batch * (in_rows * c_in_p + q_out * c_out_p) * dtype_bytes
  partial_bytes = 2 * taps * c_in_p * c_out_p * 4
  splits = min(-(-config_lib.MIN_PROGRAMS // programs), -(-rows // block_q),
               int(PARTIAL_FRACTION * operand_bytes // partial_bytes))
  splits = max(1, splits)
  return WgradConfig(block_q=block_q, block_ci=block_ci, block_co=block_co, group=group,
                     num_warps=num_warps, splits=splits)


def wgrad_kernel(x_ref, dz_ref, o_ref, *, geometry: Geometry, batch: int, cfg: WgradConfig,
                 rows_per_split: int, n_ci: int, n_co: int, precision):
  """Refs: x `(N * Li, C_in)` and dz `(N * Lo, C_out)` (whole), out `(G, BLOCK_CI,
  BLOCK_CO)`: the float32 partial sums of this program's rows (or, with one row slice,
  the result in its dtype)."""
  pid = pl.program_id(0)
  co = jax.lax.rem(pid, n_co)
  ci = jax.lax.rem(jax.lax.div(pid, n_co), n_ci)
  n_groups = geometry.taps // cfg.group
  tap0 = jax.lax.rem(jax.lax.div(pid, n_co * n_ci), n_groups) * cfg.group
  split = jax.lax.div(pid, n_co * n_ci * n_groups)
  q_out, in_rows = geometry.out_rows, geometry.in_rows
  ci0 = pl.multiple_of(ci * cfg.block_ci, cfg.block_ci)
  co0 = pl.multiple_of(co * cfg.block_co, cfg.block_co)

  def step(j, accs):
    r = split * rows_per_split + j * cfg.block_q + jnp.arange(cfg.block_q, dtype=jnp.int32)
    row_ok = r < batch * q_out
    dzt = gather_rows(dz_ref, jnp.where(row_ok, r, 0), row_ok, co0, cfg.block_co)
    origin = output_origin(r % q_out, geometry)
    x_base = (r // q_out) * in_rows
    new = []
    for g, acc in enumerate(accs):
      rows, ok = tap_rows(origin, row_ok, tap0 + g, geometry)
      xt = gather_rows(x_ref, jnp.where(ok, x_base + rows, 0), ok, ci0, cfg.block_ci)
      new.append(acc + jax.lax.dot_general(
          xt, dzt, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32,
          precision=precision))
    return tuple(new)

  zeros = jnp.zeros((cfg.block_ci, cfg.block_co), jnp.float32)
  accs = jax.lax.fori_loop(0, rows_per_split // cfg.block_q, step, (zeros,) * cfg.group)
  for g, acc in enumerate(accs):
    o_ref[g, :, :] = acc.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("window", "pads", "stride", "interpret",
                                             "config", "precision", "out_dtype"))
def conv3d_wgrad(x: jax.Array, dz: jax.Array, *, window: tuple[int, int, int],
                 pads: tuple[tuple[int, int], ...], stride: int = 1, interpret: bool = False,
                 config: WgradConfig | None = None, precision: str = "default",
                 out_dtype=jnp.float32) -> jax.Array:
  """`dw` of `pallas_gpu.conv3d(x, w, pads=pads, stride=stride)` given the gradient `dz`
  of its pre-activation.

  Args:
    x: the forward's input `(N, Di, Hi, Wi, C_in)` (unpadded).
    dz: `(N, Do, Ho, Wo, C_out)`, the gradient of the pre-activation, in `x.dtype`.
    window: `(kd, kh, kw)`; pads, stride: the forward's.
    config: tiles; `wgrad_config` of the shape when None.
    precision: float32 dot algorithm, as `pallas_gpu.conv3d`.
    out_dtype: of the result. With one row slice the kernel writes it directly (no float32
      partial sums: deep layers, whose weights are as large as their activations).
  Returns:
    `(kd, kh, kw, C_in, C_out)` in `out_dtype` (float32 accumulation).
  """
  dot_prec = dot_precision(x.dtype, precision, interpret)
  n, c_in, c_out = x.shape[0], x.shape[-1], dz.shape[-1]
  geometry = Geometry(x.shape[1:4], dz.shape[1:4], window, tuple(lo for lo, _ in pads),
                      stride)
  check_rows(geometry)
  in_rows, q_out = geometry.in_rows, geometry.out_rows
  if n > 1 and n * max(in_rows, q_out) > MAX_ROWS:  # int32 rows: one element at a time
    call = functools.partial(conv3d_wgrad, window=window, pads=pads, stride=stride,
                             interpret=interpret, config=config, precision=precision)
    return sum(call(x[i:i + 1], dz[i:i + 1]) for i in range(n)).astype(out_dtype)
  cfg = config or wgrad_config(c_in, c_out, window, q_out, x.dtype.itemsize, batch=n,
                               in_rows=in_rows)
  c_in_p = pl.cdiv(padded_channels(c_in), cfg.block_ci) * cfg.block_ci
  c_out_p = pl.cdiv(padded_channels(c_out), cfg.block_co) * cfg.block_co
  taps = geometry.taps
  if taps % cfg.group:
    raise ValueError(f"wgrad group {cfg.group} does not divide the {taps} taps")
  n_ci, n_co = c_in_p // cfg.block_ci, c_out_p // cfg.block_co
  n_groups = taps // cfg.group
  rows_per_split = pl.cdiv(pl.cdiv(n * q_out, cfg.splits), cfg.block_q) * cfg.block_q
  # unpadded: the kernel masks the channels past C_in / C_out in its loads
  x_rows = x.reshape(n * in_rows, c_in)
  dz_rows = dz.astype(x.dtype).reshape(n * q_out, c_out)
  kernel = functools.partial(
      wgrad_kernel, geometry=geometry, batch=n, cfg=cfg, rows_per_split=rows_per_split,
      n_ci=n_ci, n_co=n_co, precision=dot_prec)
  per_split = n_groups * n_ci * n_co
  direct = cfg.splits == 1  # the kernel writes the result in out_dtype
  partial = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((cfg.splits, taps, c_in_p, c_out_p),
                                     out_dtype if direct else jnp.float32),
      grid=(cfg.splits * per_split,),
      in_specs=[pl.BlockSpec((n * in_rows, c_in), lambda j: (0, 0)),
                pl.BlockSpec((n * q_out, c_out), lambda j: (0, 0))],
      out_specs=pl.BlockSpec(
          (None, cfg.group, cfg.block_ci, cfg.block_co),
          lambda j: (j // per_split, (j // (n_co * n_ci)) % n_groups, (j // n_co) % n_ci,
                     j % n_co)),
      compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
      interpret=interpret,
      name=KERNEL_NAME,
  )(x_rows, dz_rows)
  dw = partial[0] if direct else partial.sum(axis=0).astype(out_dtype)
  return dw[:, :c_in, :c_out].reshape(window + (c_in, c_out))
