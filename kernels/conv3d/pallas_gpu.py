"""Fused 3D convolution as a Pallas GPU (Triton) kernel, the halo inside the kernel.

Computes the stride-1 convolution of an *unpadded* input with implicit zero padding
`pads`, plus bias, plus residual, then the activation, all in registers, with one
store: `y = act(sum_t x[o + t - pad_lo] @ w[t] + b + r)` (the conv + bias + PReLU +
residual unit of V-Net, Milletari et al. 2016; conv + bias + ReLU of 3D U-Net, Cicek
et al. 2016). Stride 2 (space-to-depth) and channel padding to a power of two happen
in XLA before the call (see `api.py`).

Implicit GEMM with masked row gathers: the input `(N, Di, Hi, Wi, C)` is read as rows
`(N, Di*Hi*Wi, C)` (a free reshape) and the output is written as rows `(N, Do*Ho*Wo,
C_out)` on the output grid itself. A program owns `BLOCK_Q` consecutive output rows;
it decodes their `(d, h, w)` once, and for tap `(a, b, c)` gathers input row
`(d + a - pd, h + b - ph, w + c - pw)`, masked to zero where that falls outside the
volume (the halo, which is never materialised), then does a `(BLOCK_Q, BLOCK_K) @
(BLOCK_K, BLOCK_CO)` dot accumulated in float32. Each gathered row is `BLOCK_K`
contiguous channels (128 bytes), so the loads stay coalesced and vectorised. The
input gradient is the same kernel on `dz` with the flipped kernel and pads `k-1-pad`.
Before (issue 13) XLA padded and flattened x (and dz) into new arrays, the kernel
computed on the padded grid and a slice copied the valid part out: 2.3-6.8x the
byte floor per layer, mostly those copies.

Split-K: every program runs one loop over (tap x C_in chunk of `BLOCK_K`), so
a step holds a `(BLOCK_Q, BLOCK_K)` and a `(BLOCK_K, BLOCK_CO)` tile whatever
C_in is (space-to-depth makes C_in 1024 for V-Net's 128->256 down conv, whose
single 64x1024 tile needed more shared memory than an H100 has), and Triton
software-pipelines the loop (`num_stages` cp.async buffers) for every window
size. Block sizes: `config.gpu_config`.

Grid: `(Q blocks * C_out blocks, N)`, C_out blocks fastest, so the programs
that read the same input rows run next to each other (the rows come from L2
once, not once per C_out block); the flat first axis also lifts the 65,535
limit of the second and third grid axes. Triton dots need every dim >= 16 and
powers of two, so channels are padded to a power of two >= 16 (in XLA, only when a
layer's channel count is not one already). Offsets: row indices are int32 (a volume
has fewer than 2^31 voxels); Pallas multiplies them by the row stride in 64 bits
whenever an operand exceeds 4 GiB, so large batches need no splitting.

Precision (`precision=`, a key of `PRECISIONS`): by default float32 inputs go
through the tensor cores as TF32 (Triton's default for float32 dots on sm_80+:
10-bit mantissa products, float32 accumulation; relative error ~1e-3 against
exact float32, as cuDNN and XLA by default); "tf32x3" splits each product into
three TF32 ones (~float32 accuracy on tensor cores); "highest" takes exact
float32 FMAs. bfloat16 inputs are bfloat16 products with float32 accumulation.
The interpreter computes exact float32 whatever `precision` says, so the
interpreter tests do not see the TF32 rounding (the compiled tests of
benchmarks/gpu_bench.sh do, at a TF32 tolerance).
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


def _preactivation(acc, b_ref, r_ref):
  """bias + residual on the float32 accumulator tile."""
  if b_ref is not None:
    acc = acc + b_ref[...].astype(jnp.float32)
  if r_ref is not None:
    acc = acc + r_ref[...].astype(jnp.float32)
  return acc


def _epilogue(acc, b_ref, r_ref, s_ref, activation):
  """bias + residual + activation on the float32 accumulator tile."""
  acc = _preactivation(acc, b_ref, r_ref)
  if activation == "relu":
    acc = jnp.maximum(acc, 0.0)
  elif activation == "leaky_relu":
    acc = jnp.where(acc >= 0, acc, LEAKY_RELU_SLOPE * acc)
  elif activation == "prelu":
    acc = jnp.where(acc >= 0, acc, s_ref[...].astype(jnp.float32) * acc)
  return acc


def output_origin(q, out_dims, pad_lo):
  """Input coordinates of tap (0, 0, 0) for output rows `q` (int32 vectors d, h, w)."""
  _, ho, wo = out_dims
  return q // (ho * wo) - pad_lo[0], (q // wo) % ho - pad_lo[1], q % wo - pad_lo[2]


def tap_rows(origin, row_ok, t, in_dims, window):
  """Flat input row of tap `t` (a traced int32 scalar) for every output row, and whether
  it lies inside the volume; rows outside read index 0 (masked: the zero halo)."""
  di, hi, wi = in_dims
  _, kh, kw = window
  a, rem = jax.lax.div(t, kh * kw), jax.lax.rem(t, kh * kw)
  b, c = jax.lax.div(rem, kw), jax.lax.rem(rem, kw)
  d, h, w = origin[0] + a, origin[1] + b, origin[2] + c
  ok = row_ok & (d >= 0) & (d < di) & (h >= 0) & (h < hi) & (w >= 0) & (w < wi)
  return jnp.where(ok, (d * hi + h) * wi + w, 0), ok


def gather_rows(ref, rows, ok, col0, width):
  """`ref[rows, col0:col0 + width]` with the rows where `ok` is False read as zeros."""
  cols = col0 + jnp.arange(width, dtype=jnp.int32)
  return plgpu.load(ref.at[rows[:, None], cols[None, :]], mask=ok[:, None], other=0)


def conv_kernel(x_ref, w_ref, *refs, geometry, block_q: int, block_k: int, n_k: int,
                n_co: int, has_bias: bool, has_residual: bool, activation: Optional[str],
                precision=None, save_preactivation: bool = False, flip_kernel: bool = False):
  """One (BLOCK_Q, BLOCK_CO) output tile: a loop over (tap, C_in chunk) pairs.

  Refs: x `(Li, C_in)` (one batch element, unpadded rows), w `(T, C_in, BLOCK_CO)` (with
  `flip_kernel`: `(T, BLOCK_CO, C_in)`, read at tap `T-1-t` and transposed in the dot),
  [b `(1, BLOCK_CO)`], [r `(BLOCK_Q, BLOCK_CO)`], [slope `(1, BLOCK_CO)`],
  out `(BLOCK_Q, BLOCK_CO)`, [pre-activation out, same tile]. `geometry`:
  (in_dims, out_dims, window, pad_lo).
  """
  refs = list(refs)
  z_ref = refs.pop() if save_preactivation else None
  o_ref = refs.pop()
  b_ref = refs.pop(0) if has_bias else None
  r_ref = refs.pop(0) if has_residual else None
  s_ref = refs.pop(0) if activation == "prelu" else None
  in_dims, out_dims, window, pad_lo = geometry
  taps = window[0] * window[1] * window[2]
  q = (pl.program_id(0) // n_co) * block_q + jnp.arange(block_q, dtype=jnp.int32)
  row_ok = q < out_dims[0] * out_dims[1] * out_dims[2]
  origin = output_origin(q, out_dims, pad_lo)

  def step(i, acc):
    t, kc = jax.lax.div(i, n_k), jax.lax.rem(i, n_k)
    rows, ok = tap_rows(origin, row_ok, t, in_dims, window)
    k0 = pl.multiple_of(kc * block_k, block_k)
    xt = gather_rows(x_ref, rows, ok, k0, block_k)
    if flip_kernel:
      wt = w_ref[taps - 1 - t, :, pl.ds(k0, block_k)]
      return acc + jax.lax.dot_general(xt, wt, (((1,), (1,)), ((), ())), precision=precision,
                                       preferred_element_type=jnp.float32)
    wt = w_ref[t, pl.ds(k0, block_k), :]
    return acc + jnp.dot(xt, wt, preferred_element_type=jnp.float32, precision=precision)

  acc = jax.lax.fori_loop(0, taps * n_k, step, jnp.zeros(o_ref.shape, jnp.float32))
  mask = row_ok[:, None]
  if r_ref is not None:
    acc = acc + plgpu.load(r_ref, mask=mask, other=0).astype(jnp.float32)
  if z_ref is None:
    y = _epilogue(acc, b_ref, None, s_ref, activation)
    plgpu.store(o_ref, y.astype(o_ref.dtype), mask=mask)
    return
  z = _preactivation(acc, b_ref, None)
  plgpu.store(z_ref, z.astype(z_ref.dtype), mask=mask)
  plgpu.store(o_ref, _epilogue(z, None, None, s_ref, activation).astype(o_ref.dtype), mask=mask)


def _pad_axis(a, axis, size):
  if a.shape[axis] == size:
    return a
  pads = [(0, 0)] * a.ndim
  pads[axis] = (0, size - a.shape[axis])
  return jnp.pad(a, pads)


def padded_channels(c: int) -> int:
  """Channels as the Triton dots take them: a power of two >= 16."""
  return max(16, config_lib.next_pow2(c))


# `precision=` of `conv3d` -> the float32 dot algorithm in the Triton kernels.
PRECISIONS = {
    "default": None,  # TF32 tensor cores
    "tf32x3": jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
    "highest": jax.lax.Precision.HIGHEST,  # IEEE float32 FMAs
}

# Voxels of one volume at most: row indices are int32.
MAX_ROWS = 2 ** 31 - 1

NO_PADS = ((0, 0),) * 3


def dot_precision(dtype, precision: str, interpret: bool):
  """The `precision=` of the kernels' float32 dots (None: Triton's default, TF32)."""
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r}: expected one of {tuple(PRECISIONS)}")
  return None if interpret or dtype != jnp.float32 else PRECISIONS[precision]


def check_rows(*volumes):
  for shape in volumes:
    if shape[1] * shape[2] * shape[3] > MAX_ROWS:
      raise ValueError(f"conv3d: a volume of {shape[1:4]} has more than 2^31-1 voxels "
                       "(int32 row indices): tile it, e.g. with medjax.inference.sliding_window")


@functools.partial(jax.jit, static_argnames=("pads", "activation", "interpret", "config",
                                             "name", "precision", "save_preactivation",
                                             "flip_kernel"))
def conv3d(x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None,
           residual: Optional[jax.Array] = None, prelu_slope: Optional[jax.Array] = None,
           *, pads: tuple[tuple[int, int], ...] = NO_PADS, activation: Optional[str] = None,
           interpret: bool = False, config: Optional[config_lib.GpuConfig] = None,
           name: str = "medjax_conv3d", precision: str = "default",
           save_preactivation: bool = False, flip_kernel: bool = False):
  """`act(conv_stride1(x, w, pads) + b + residual)` on GPU (Triton), zero halo in-kernel.

  Args:
    x: input `(N, Di, Hi, Wi, C_in)`, not padded.
    w: `(kd, kh, kw, C_in, C_out)`.
    b, prelu_slope: `(C_out,)` or None; residual: `(N, Do, Ho, Wo, C_out)` or None.
    pads: `((lo, hi),) * 3` zero padding per spatial axis, never materialised.
    config: block sizes; `config.gpu_config` of the shape when None.
    name: the kernel's name in the compiled program (profiles, `compile_check`).
    precision: float32 dot algorithm, a key of `PRECISIONS` (see the module docstring);
      the interpreter always computes exact float32.
    save_preactivation: also return `conv + b + residual` before the activation (what
      the PReLU backward needs), written by the same kernel.
    flip_kernel: convolve with `flip(w, spatial).swapaxes(3, 4)` (the input gradient's
      kernel; then `w` is `(kd, kh, kw, C_out, C_in)`) without materialising it: the
      kernel reads tap `T-1-t` and transposes the tile in the dot.
  Returns:
    `(N, Do, Ho, Wo, C_out)` with `Do = Di + lo + hi - kd + 1` etc., in `x.dtype`; with
    `save_preactivation`, a pair (output, pre-activation) of that shape.
  Raises:
    ValueError: a volume has 2^31 voxels or more, or a bad `precision`.
  """
  dot_prec = dot_precision(x.dtype, precision, interpret)
  n, di, hi, wi, c_in = x.shape
  kd, kh, kw = w.shape[:3]
  c_out = w.shape[3] if flip_kernel else w.shape[4]
  window = (kd, kh, kw)
  in_dims = (di, hi, wi)
  out_dims = tuple(d + lo + hi_ - k + 1 for d, (lo, hi_), k in zip(in_dims, pads, window))
  check_rows(x.shape, (n,) + out_dims)
  q_out = out_dims[0] * out_dims[1] * out_dims[2]
  c_in_p = padded_channels(c_in)
  cfg = config or config_lib.gpu_config(c_in, c_out, q_out, x.dtype.itemsize, batch=n)
  c_out_p = pl.cdiv(padded_channels(c_out), cfg.block_co) * cfg.block_co
  n_q = pl.cdiv(q_out, cfg.block_q)
  taps = kd * kh * kw

  x_rows = _pad_axis(x, 4, c_in_p).reshape(n, di * hi * wi, c_in_p)
  if flip_kernel:  # (T, C_out, C_in): this conv's output channels on axis 1
    w_flat = _pad_axis(_pad_axis(w.astype(x.dtype), 3, c_out_p), 4, c_in_p)
    w_flat = w_flat.reshape(taps, c_out_p, c_in_p)
  else:
    w_flat = _pad_axis(_pad_axis(w.astype(x.dtype), 3, c_in_p), 4, c_out_p)
    w_flat = w_flat.reshape(taps, c_in_p, c_out_p)
  n_co = c_out_p // cfg.block_co
  args = [x_rows, w_flat]
  in_specs = [
      pl.BlockSpec((None, di * hi * wi, c_in_p), lambda j, i: (i, 0, 0)),
      pl.BlockSpec((taps, cfg.block_co, c_in_p), lambda j, i: (0, j % n_co, 0))
      if flip_kernel else
      pl.BlockSpec((taps, c_in_p, cfg.block_co), lambda j, i: (0, 0, j % n_co)),
  ]
  vec_spec = pl.BlockSpec((1, cfg.block_co), lambda j, i: (0, j % n_co))
  tile_spec = pl.BlockSpec((None, cfg.block_q, cfg.block_co),
                           lambda j, i: (i, j // n_co, j % n_co))
  if b is not None:
    args.append(_pad_axis(b.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)
  if residual is not None:
    args.append(_pad_axis(residual, 4, c_out_p).reshape(n, q_out, c_out_p))
    in_specs.append(tile_spec)
  if activation == "prelu":
    args.append(_pad_axis(prelu_slope.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)

  block_k = min(cfg.block_k, c_in_p)
  kernel = functools.partial(
      conv_kernel, geometry=(in_dims, out_dims, window, tuple(lo for lo, _ in pads)),
      block_q=cfg.block_q, block_k=block_k, n_k=c_in_p // block_k, n_co=n_co,
      has_bias=b is not None, precision=dot_prec, has_residual=residual is not None,
      activation=activation, save_preactivation=save_preactivation, flip_kernel=flip_kernel)
  out = jax.ShapeDtypeStruct((n, q_out, c_out_p), x.dtype)
  outs = pl.pallas_call(
      kernel,
      out_shape=(out, out) if save_preactivation else out,
      grid=(n_q * n_co, n),
      in_specs=in_specs,
      out_specs=(tile_spec, tile_spec) if save_preactivation else tile_spec,
      compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
      interpret=interpret,
      name=name,
  )(*args)
  to_volume = lambda y: y.reshape((n,) + out_dims + (c_out_p,))[..., :c_out]
  return tuple(map(to_volume, outs)) if save_preactivation else to_volume(outs)


def conv3d_valid(xp: jax.Array, w: jax.Array, b: Optional[jax.Array] = None,
                 residual: Optional[jax.Array] = None, prelu_slope: Optional[jax.Array] = None,
                 **kw):
  """`conv3d` of an input padded already (VALID): the Mosaic kernel's signature."""
  return conv3d(xp, w, b, residual, prelu_slope, pads=NO_PADS, **kw)
