"""Fused 3D convolution as a Pallas GPU (Triton) kernel, halo and stride inside it.

Computes the convolution of an *unpadded* input with implicit zero padding `pads` and a
stride, plus bias, plus residual, then the activation, all in registers, with one
store: `y[o] = act(sum_t x[o * s + t - pad_lo] @ w[t] + b + r)` (the conv + bias +
PReLU + residual unit and the 2x2x2 stride-2 down conv of V-Net, Milletari et al. 2016;
conv + bias + ReLU of 3D U-Net, Cicek et al. 2016). No activation is padded or copied
in XLA: only the small operands (w, b, the PReLU slope) are padded to the channel tiles.

Implicit GEMM with masked row gathers: the input `(N, Di, Hi, Wi, C)` is read as rows
`(N, Di*Hi*Wi, C)` (a free reshape) and the output is written as rows `(N, Do*Ho*Wo,
C_out)` on the output grid itself. A program owns `BLOCK_Q` consecutive output rows;
it decodes their `(d, h, w)` once (`output_origin`), and for tap `(a, b, c)` gathers
input row `(d*s + a - pd, h*s + b - ph, w*s + c - pw)`, masked to zero where that
falls outside the volume (the halo, never materialised; `tap_rows`), then does a
`(BLOCK_Q, BLOCK_K) @ (BLOCK_K, BLOCK_CO)` dot accumulated in float32. Each gathered row
is `BLOCK_K` contiguous channels (64-128 bytes), so the loads stay coalesced and
vectorised. The input gradient (`conv3d_input_grad`) is the same kernel in the
transposed geometry: dx row `i`, tap `t` reads dz row `(i + pad_lo - t) / s` where that
is an integer, with the forward's `w[t]` read in place and transposed in the dot (no
flipped copy of the weights). With stride 2 only one tap in two per axis meets a given
dx row, so that kernel multiplies zeros for 7 taps in 8 of a 2x2x2 window: compute a
down conv can afford (its FLOPs are 1/16 of a 3x3x3 conv's at the same size), traded for
no space-to-depth copies. Padding and flattening x (and dz) into new arrays,
space-to-depth transposing the input of stride-2 convs and slicing the valid part out of
a result on the padded grid would move 2.3-6.8x the byte floor per layer, mostly in those
copies (the static roofline of `benchmarks/RESULTS.md`).

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
powers of two, so the channel tiles are (>= 16, a power of two); a layer's activations
are never padded to them: loads past its channel count are masked (zeros), stores
past it dropped, and only w, b and the PReLU slope are padded in XLA. Offsets: row
indices are int32 (a volume has fewer than 2^31 voxels); Pallas multiplies them by the
row stride in 64 bits whenever an operand exceeds 4 GiB, so large batches need no
splitting.

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
from typing import NamedTuple, Optional

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


class Geometry(NamedTuple):
  """Where the rows of one convolution come from (static: hashable for `jax.jit`).

  Forward (`transposed=False`): output voxel `o`, tap `t` reads input voxel
  `o * stride + t - pad_lo`. Input gradient of such a convolution (`transposed=True`;
  "input" is then dz on the forward's output grid, "output" dx on its input grid): dx
  voxel `i`, tap `t` reads dz voxel `(i + pad_lo - t) / stride` where that is an integer
  (with stride 2 one tap in 2 per axis contributes to a voxel: the others are masked).
  """
  in_dims: tuple[int, int, int]
  out_dims: tuple[int, int, int]
  window: tuple[int, int, int]
  pad_lo: tuple[int, int, int]
  stride: int = 1
  transposed: bool = False

  @property
  def taps(self) -> int:
    return self.window[0] * self.window[1] * self.window[2]

  @property
  def in_rows(self) -> int:
    """Voxels of one input volume (its rows)."""
    return self.in_dims[0] * self.in_dims[1] * self.in_dims[2]

  @property
  def out_rows(self) -> int:
    """Voxels of one output volume (its rows)."""
    return self.out_dims[0] * self.out_dims[1] * self.out_dims[2]


def output_origin(q, geometry: Geometry):
  """Per output row `q` (int32 vector), the input coordinates of tap (0, 0, 0), before
  the division by the stride in the transposed case."""
  _, ho, wo = geometry.out_dims
  coords = (q // (ho * wo), (q // wo) % ho, q % wo)
  if geometry.transposed:
    return tuple(c + p for c, p in zip(coords, geometry.pad_lo))
  return tuple(c * geometry.stride - p for c, p in zip(coords, geometry.pad_lo))


def tap_rows(origin, row_ok, t, geometry: Geometry):
  """Flat input row of tap `t` (a traced int32 scalar) for every output row, and whether
  it lies inside the volume; rows outside read index 0 (masked: the zero halo)."""
  _, kh, kw = geometry.window
  a, rem = jax.lax.div(t, kh * kw), jax.lax.rem(t, kh * kw)
  taps = (a, jax.lax.div(rem, kw), jax.lax.rem(rem, kw))
  ok, row = row_ok, 0
  for o, tap, size in zip(origin, taps, geometry.in_dims):
    if geometry.transposed:
      c = o - tap
      ok = ok & (c >= 0)
      if geometry.stride > 1:
        c = jnp.maximum(c, 0)
        ok = ok & (jax.lax.rem(c, geometry.stride) == 0)
        c = jax.lax.div(c, geometry.stride)
    else:
      c = o + tap
      ok = ok & (c >= 0)
    ok = ok & (c < size)
    row = row * size + c
  return jnp.where(ok, row, 0), ok


def _columns(col0, width, limit):
  """Column indices `col0 + [0, width)` and, when `limit` (the array's channel count) is
  not a multiple of `width`, the mask of those below it (None: all are)."""
  cols = col0 + jnp.arange(width, dtype=jnp.int32)
  return cols, (None if limit % width == 0 else cols[None, :] < limit)


def gather_rows(ref, rows, ok, col0, width):
  """`ref[rows, col0:col0 + width]`, zeros where `ok` is False (the halo) and past the
  array's channels (a layer whose count is not a multiple of the tile: never padded)."""
  cols, col_ok = _columns(col0, width, ref.shape[-1])
  mask = ok[:, None] if col_ok is None else ok[:, None] & col_ok
  return plgpu.load(ref.at[rows[:, None], cols[None, :]], mask=mask, other=0)


def scatter_rows(ref, rows, ok, col0, val):
  """`ref[rows, col0:col0 + width] = val` where `ok` and within the array's channels."""
  cols, col_ok = _columns(col0, val.shape[1], ref.shape[-1])
  mask = ok[:, None] if col_ok is None else ok[:, None] & col_ok
  plgpu.store(ref.at[rows[:, None], cols[None, :]], val.astype(ref.dtype), mask=mask)


def conv_kernel(x_ref, w_ref, *refs, geometry: Geometry, block_q: int, block_k: int, n_k: int,
                n_co: int, has_bias: bool, has_residual: bool, activation: Optional[str],
                precision=None, save_preactivation: bool = False):
  """One (BLOCK_Q, BLOCK_CO) output tile: a loop over (tap, C_in chunk) pairs.

  Refs: x `(Li, C_in)` (one batch element, unpadded), w `(T, C_in_p, BLOCK_CO)` (when
  `geometry.transposed`: the forward's kernel `(T, BLOCK_CO, C_in_p)`, its tile transposed
  in the dot), [b `(1, BLOCK_CO)`], [r `(Lo, C_out)`], [slope `(1, BLOCK_CO)`], out
  `(Lo, C_out)` (one batch element, whole: this program stores its tile), [pre-activation
  out, the same]. Channels padded only in the small operands (w, b, slope).
  """
  refs = list(refs)
  z_ref = refs.pop() if save_preactivation else None
  o_ref = refs.pop()
  b_ref = refs.pop(0) if has_bias else None
  r_ref = refs.pop(0) if has_residual else None
  s_ref = refs.pop(0) if activation == "prelu" else None
  block_co = w_ref.shape[1] if geometry.transposed else w_ref.shape[2]
  co0 = pl.multiple_of(jax.lax.rem(pl.program_id(0), n_co) * block_co, block_co)
  q = (pl.program_id(0) // n_co) * block_q + jnp.arange(block_q, dtype=jnp.int32)
  row_ok = q < geometry.out_rows
  origin = output_origin(q, geometry)

  def step(i, acc):
    t, kc = jax.lax.div(i, n_k), jax.lax.rem(i, n_k)
    rows, ok = tap_rows(origin, row_ok, t, geometry)
    k0 = pl.multiple_of(kc * block_k, block_k)
    xt = gather_rows(x_ref, rows, ok, k0, block_k)
    if geometry.transposed:
      wt = w_ref[t, :, pl.ds(k0, block_k)]
      return acc + jax.lax.dot_general(xt, wt, (((1,), (1,)), ((), ())), precision=precision,
                                       preferred_element_type=jnp.float32)
    wt = w_ref[t, pl.ds(k0, block_k), :]
    return acc + jnp.dot(xt, wt, preferred_element_type=jnp.float32, precision=precision)

  acc = jax.lax.fori_loop(0, geometry.taps * n_k, step,
                          jnp.zeros((block_q, block_co), jnp.float32))
  if r_ref is not None:
    acc = acc + gather_rows(r_ref, q, row_ok, co0, block_co).astype(jnp.float32)
  if z_ref is None:
    scatter_rows(o_ref, q, row_ok, co0, _epilogue(acc, b_ref, None, s_ref, activation))
    return
  z = _preactivation(acc, b_ref, None)
  scatter_rows(z_ref, q, row_ok, co0, z)
  scatter_rows(o_ref, q, row_ok, co0, _epilogue(z, None, None, s_ref, activation))


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


def check_rows(geometry: Geometry):
  """ValueError for an input or output volume with more voxels than int32 row indices reach."""
  for dims, rows in ((geometry.in_dims, geometry.in_rows), (geometry.out_dims, geometry.out_rows)):
    if rows > MAX_ROWS:
      raise ValueError(f"conv3d: a volume of {tuple(dims)} has more than 2^31-1 voxels "
                       "(int32 row indices): tile it, e.g. with medjax.inference.sliding_window")


def _call(x, w_flat, b, residual, prelu_slope, *, geometry: Geometry, c_out: int,
          c_out_p: int, cfg: config_lib.GpuConfig, activation, dot_prec, interpret, name,
          save_preactivation):
  """The pallas_call: x `(N, *in_dims, C_in)`, w_flat as `conv_kernel` reads it (padded
  to `c_in_p` / `c_out_p` channels). Returns `(N, *out_dims, C_out)` (or the pair)."""
  n, c_in = x.shape[0], x.shape[-1]
  c_in_p = padded_channels(c_in)
  rows_in, q_out = geometry.in_rows, geometry.out_rows
  taps = geometry.taps
  n_q, n_co = pl.cdiv(q_out, cfg.block_q), c_out_p // cfg.block_co
  args = [x.reshape(n, rows_in, c_in), w_flat]
  in_specs = [
      pl.BlockSpec((None, rows_in, c_in), lambda j, i: (i, 0, 0)),
      pl.BlockSpec((taps, cfg.block_co, c_in_p), lambda j, i: (0, j % n_co, 0))
      if geometry.transposed else
      pl.BlockSpec((taps, c_in_p, cfg.block_co), lambda j, i: (0, 0, j % n_co)),
  ]
  vec_spec = pl.BlockSpec((1, cfg.block_co), lambda j, i: (0, j % n_co))
  out_spec = pl.BlockSpec((None, q_out, c_out), lambda j, i: (i, 0, 0))
  if b is not None:
    args.append(_pad_axis(b.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)
  if residual is not None:
    args.append(residual.reshape(n, q_out, c_out))
    in_specs.append(out_spec)
  if activation == "prelu":
    args.append(_pad_axis(prelu_slope.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)

  block_k = min(cfg.block_k, c_in_p)
  kernel = functools.partial(
      conv_kernel, geometry=geometry, block_q=cfg.block_q, block_k=block_k,
      n_k=c_in_p // block_k, n_co=n_co, has_bias=b is not None, precision=dot_prec,
      has_residual=residual is not None, activation=activation,
      save_preactivation=save_preactivation)
  out = jax.ShapeDtypeStruct((n, q_out, c_out), x.dtype)
  outs = pl.pallas_call(
      kernel,
      out_shape=(out, out) if save_preactivation else out,
      grid=(n_q * n_co, n),
      in_specs=in_specs,
      out_specs=(out_spec, out_spec) if save_preactivation else out_spec,
      compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
      interpret=interpret,
      name=name,
  )(*args)
  to_volume = lambda y: y.reshape((n,) + geometry.out_dims + (c_out,))
  return tuple(map(to_volume, outs)) if save_preactivation else to_volume(outs)


@functools.partial(jax.jit, static_argnames=("pads", "stride", "activation", "interpret",
                                             "config", "name", "precision",
                                             "save_preactivation"))
def conv3d(x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None,
           residual: Optional[jax.Array] = None, prelu_slope: Optional[jax.Array] = None,
           *, pads: tuple[tuple[int, int], ...] = NO_PADS, stride: int = 1,
           activation: Optional[str] = None, interpret: bool = False,
           config: Optional[config_lib.GpuConfig] = None, name: str = "medjax_conv3d",
           precision: str = "default", save_preactivation: bool = False):
  """`act(conv(x, w, stride, pads) + b + residual)` on GPU (Triton), zero halo in-kernel.

  Args:
    x: input `(N, Di, Hi, Wi, C_in)`, not padded.
    w: `(kd, kh, kw, C_in, C_out)`.
    b, prelu_slope: `(C_out,)` or None; residual: `(N, Do, Ho, Wo, C_out)` or None.
    pads: `((lo, hi),) * 3` zero padding per spatial axis, never materialised.
    stride: of every spatial axis (the input rows are gathered `stride` apart).
    config: block sizes; `config.gpu_config` of the shape when None.
    name: the kernel's name in the compiled program (profiles, `compile_check`).
    precision: float32 dot algorithm, a key of `PRECISIONS` (see the module docstring);
      the interpreter always computes exact float32.
    save_preactivation: also return `conv + b + residual` before the activation (what
      the PReLU backward needs), written by the same kernel.
  Returns:
    `(N, Do, Ho, Wo, C_out)` with `Do = (Di + lo + hi - kd) // stride + 1` etc., in
    `x.dtype`; with `save_preactivation`, a pair (output, pre-activation) of that shape.
  Raises:
    ValueError: a volume has 2^31 voxels or more, or a bad `precision`.
  """
  dot_prec = dot_precision(x.dtype, precision, interpret)
  n, c_in, c_out = x.shape[0], x.shape[-1], w.shape[-1]
  window, in_dims = w.shape[:3], x.shape[1:4]
  out_dims = tuple((d + lo + hi - k) // stride + 1
                   for d, (lo, hi), k in zip(in_dims, pads, window))
  geometry = Geometry(in_dims, out_dims, window, tuple(lo for lo, _ in pads), stride)
  check_rows(geometry)
  c_in_p = padded_channels(c_in)
  cfg = config or config_lib.gpu_config(c_in, c_out, geometry.out_rows, x.dtype.itemsize,
                                        batch=n)
  c_out_p = pl.cdiv(padded_channels(c_out), cfg.block_co) * cfg.block_co
  w_flat = _pad_axis(_pad_axis(w.astype(x.dtype), 3, c_in_p), 4, c_out_p)
  return _call(x, w_flat.reshape(geometry.taps, c_in_p, c_out_p), b, residual, prelu_slope,
               geometry=geometry, c_out=c_out, c_out_p=c_out_p, cfg=cfg,
               activation=activation, dot_prec=dot_prec, interpret=interpret, name=name,
               save_preactivation=save_preactivation)


@functools.partial(jax.jit, static_argnames=("in_dims", "pads", "stride", "interpret",
                                             "config", "name", "precision"))
def conv3d_input_grad(dz: jax.Array, w: jax.Array, *, in_dims: tuple[int, int, int],
                      pads: tuple[tuple[int, int], ...] = NO_PADS, stride: int = 1,
                      interpret: bool = False, config: Optional[config_lib.GpuConfig] = None,
                      name: str = "medjax_conv3d_dx", precision: str = "default"):
  """`dx` of `conv3d(x, w, pads=pads, stride=stride)` given `dz`, the gradient of its
  pre-activation, by the same kernel: `dx[i] = sum_t dz[(i + pad_lo - t) / stride] @ w[t]^T`
  (integer quotients only), the forward's kernel read in place (tile transposed in the
  dot: no flipped copy of w), the zero halo masked in-kernel.

  Args:
    dz: `(N, Do, Ho, Wo, C_out)`; w: the forward's `(kd, kh, kw, C_in, C_out)`.
    in_dims: the forward input's `(Di, Hi, Wi)`.
  Returns:
    `(N, Di, Hi, Wi, C_in)` in `dz.dtype`.
  """
  dot_prec = dot_precision(dz.dtype, precision, interpret)
  n, c_src, c_dst = dz.shape[0], w.shape[-1], w.shape[3]  # reads C_out, writes C_in
  geometry = Geometry(dz.shape[1:4], tuple(in_dims), w.shape[:3],
                      tuple(lo for lo, _ in pads), stride, transposed=True)
  check_rows(geometry)
  c_src_p = padded_channels(c_src)
  cfg = config or config_lib.gpu_config(c_src, c_dst, geometry.out_rows, dz.dtype.itemsize,
                                        batch=n)
  c_dst_p = pl.cdiv(padded_channels(c_dst), cfg.block_co) * cfg.block_co
  w_flat = _pad_axis(_pad_axis(w.astype(dz.dtype), 3, c_dst_p), 4, c_src_p)
  return _call(dz, w_flat.reshape(geometry.taps, c_dst_p, c_src_p), None, None, None,
               geometry=geometry, c_out=c_dst, c_out_p=c_dst_p, cfg=cfg, activation=None,
               dot_prec=dot_prec, interpret=interpret, name=name, save_preactivation=False)


def conv3d_valid(xp: jax.Array, w: jax.Array, b: Optional[jax.Array] = None,
                 residual: Optional[jax.Array] = None, prelu_slope: Optional[jax.Array] = None,
                 **kw):
  """`conv3d` of an input padded already (VALID): the Mosaic kernel's signature."""
  return conv3d(xp, w, b, residual, prelu_slope, pads=NO_PADS, **kw)
