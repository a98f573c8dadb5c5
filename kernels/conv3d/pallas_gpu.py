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
powers of two, so channels are padded to a power of two >= 16 here. Pointer
offsets are 32-bit: a call whose operands have >= 2^31 elements runs one batch
element at a time, and a single element that large is refused.

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


def conv_kernel(x_ref, w_ref, *refs, dims: tuple[int, ...], block_q: int, block_k: int,
                n_k: int, n_co: int, has_bias: bool, has_residual: bool,
                activation: Optional[str], precision=None, save_preactivation: bool = False):
  """One (BLOCK_Q, BLOCK_CO) output tile: a loop over (tap, C_in chunk) pairs.

  Refs: x `(L, C_in)` (one batch element, flattened padded volume), w
  `(T, C_in, BLOCK_CO)`, [b `(1, BLOCK_CO)`], [r `(BLOCK_Q, BLOCK_CO)`],
  [slope `(1, BLOCK_CO)`], out `(BLOCK_Q, BLOCK_CO)`, [pre-activation out, same tile].
  """
  refs = list(refs)
  z_ref = refs.pop() if save_preactivation else None
  o_ref = refs.pop()
  b_ref = refs.pop(0) if has_bias else None
  r_ref = refs.pop(0) if has_residual else None
  s_ref = refs.pop(0) if activation == "prelu" else None
  q0 = (pl.program_id(0) // n_co) * block_q
  taps, hpwp, wp, kh, kw = dims

  def step(i, acc):
    t, kc = jax.lax.div(i, n_k), jax.lax.rem(i, n_k)
    a, rem = jax.lax.div(t, kh * kw), jax.lax.rem(t, kh * kw)
    shift = a * hpwp + jax.lax.div(rem, kw) * wp + jax.lax.rem(rem, kw)
    k0 = pl.multiple_of(kc * block_k, block_k)
    xt = x_ref[pl.ds(q0 + shift, block_q), pl.ds(k0, block_k)]
    wt = w_ref[t, pl.ds(k0, block_k), :]
    return acc + jnp.dot(xt, wt, preferred_element_type=jnp.float32, precision=precision)

  acc = jax.lax.fori_loop(0, taps * n_k, step, jnp.zeros(o_ref.shape, jnp.float32))
  if z_ref is None:
    o_ref[...] = _epilogue(acc, b_ref, r_ref, s_ref, activation).astype(o_ref.dtype)
    return
  z = _preactivation(acc, b_ref, r_ref)
  z_ref[...] = z.astype(z_ref.dtype)
  o_ref[...] = _epilogue(z, None, None, s_ref, activation).astype(o_ref.dtype)


def _pad_axis(a, axis, size):
  if a.shape[axis] == size:
    return a
  pads = [(0, 0)] * a.ndim
  pads[axis] = (0, size - a.shape[axis])
  return jnp.pad(a, pads)


# `precision=` of `conv3d_valid` -> the float32 dot algorithm in the Triton kernel.
PRECISIONS = {
    "default": None,  # TF32 tensor cores
    "tf32x3": jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
    "highest": jax.lax.Precision.HIGHEST,  # IEEE float32 FMAs
}

# Largest element count a 32-bit pointer offset reaches.
MAX_ELEMENTS = 2 ** 31 - 1


@functools.partial(jax.jit, static_argnames=("activation", "interpret", "config", "name",
                                             "precision", "save_preactivation"))
def conv3d_valid(xp: jax.Array, w: jax.Array, b: Optional[jax.Array] = None,
                 residual: Optional[jax.Array] = None, prelu_slope: Optional[jax.Array] = None,
                 *, activation: Optional[str] = None, interpret: bool = False,
                 config: Optional[config_lib.GpuConfig] = None,
                 name: str = "medjax_conv3d", precision: str = "default",
                 save_preactivation: bool = False):
  """`act(conv_valid_stride1(xp, w) + b + residual)` on GPU (Triton).

  Args:
    xp: padded input `(N, Dp, Hp, Wp, C_in)`.
    w: `(kd, kh, kw, C_in, C_out)`.
    b, prelu_slope: `(C_out,)` or None; residual: `(N, Do, Ho, Wo, C_out)` or None.
    config: block sizes; `config.gpu_config` of the shape when None.
    name: the kernel's name in the compiled program (profiles, `compile_check`).
    precision: float32 dot algorithm, a key of `PRECISIONS` (see the module docstring);
      the interpreter always computes exact float32.
    save_preactivation: also return `conv + b + residual` before the activation (what
      the PReLU backward needs), written by the same kernel.
  Returns:
    `(N, Do, Ho, Wo, C_out)` with `Do = Dp - kd + 1` etc., in `xp.dtype`; with
    `save_preactivation`, a pair (output, pre-activation) of that shape.
  Raises:
    ValueError: one batch element has >= 2^31 elements in an operand.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r}: expected one of {tuple(PRECISIONS)}")
  n, dp, hp, wp, c_in = xp.shape
  kd, kh, kw, _, c_out = w.shape
  do, ho, wo = dp - kd + 1, hp - kh + 1, wp - kw + 1
  q_valid = do * hp * wp  # output rows on the padded grid
  c_in_p = max(16, config_lib.next_pow2(c_in))
  cfg = config or config_lib.gpu_config(c_in, c_out, q_valid, xp.dtype.itemsize, batch=n)
  c_out_p = pl.cdiv(max(16, config_lib.next_pow2(c_out)), cfg.block_co) * cfg.block_co
  n_q = pl.cdiv(q_valid, cfg.block_q)
  q_total = n_q * cfg.block_q
  taps = kd * kh * kw
  length = q_total + (kd - 1) * hp * wp + (kh - 1) * wp + kw - 1
  per_sample = max(length * c_in_p, q_total * c_out_p)
  if per_sample > MAX_ELEMENTS:
    raise ValueError(f"conv3d: one batch element of {xp.shape} -> C_out={c_out} needs "
                     f"{per_sample} elements > 2^31-1 (32-bit offsets): tile the volume, "
                     "e.g. with medjax.inference.sliding_window")
  if n > 1 and n * per_sample > MAX_ELEMENTS:  # one batch element per call
    call = functools.partial(conv3d_valid, activation=activation, interpret=interpret,
                             config=cfg, name=name, precision=precision,
                             save_preactivation=save_preactivation)
    parts = [call(xp[i:i + 1], w, b, None if residual is None else residual[i:i + 1],
                  prelu_slope) for i in range(n)]
    if save_preactivation:
      return tuple(jnp.concatenate(p) for p in zip(*parts))
    return jnp.concatenate(parts)

  x_flat = _pad_axis(_pad_axis(xp, 4, c_in_p).reshape(n, dp * hp * wp, c_in_p), 1, length)
  w_flat = _pad_axis(_pad_axis(w.astype(xp.dtype), 3, c_in_p), 4, c_out_p)
  w_flat = w_flat.reshape(taps, c_in_p, c_out_p)
  n_co = c_out_p // cfg.block_co
  args = [x_flat, w_flat]
  in_specs = [
      pl.BlockSpec((None, length, c_in_p), lambda j, i: (i, 0, 0)),
      pl.BlockSpec((taps, c_in_p, cfg.block_co), lambda j, i: (0, 0, j % n_co)),
  ]
  vec_spec = pl.BlockSpec((1, cfg.block_co), lambda j, i: (0, j % n_co))
  tile_spec = pl.BlockSpec((None, cfg.block_q, cfg.block_co),
                           lambda j, i: (i, j // n_co, j % n_co))
  if b is not None:
    args.append(_pad_axis(b.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)
  if residual is not None:
    r = jnp.pad(residual, ((0, 0), (0, 0), (0, hp - ho), (0, wp - wo), (0, c_out_p - c_out)))
    args.append(_pad_axis(r.reshape(n, q_valid, c_out_p), 1, q_total))
    in_specs.append(tile_spec)
  if activation == "prelu":
    args.append(_pad_axis(prelu_slope.astype(jnp.float32).reshape(1, c_out), 1, c_out_p))
    in_specs.append(vec_spec)

  block_k = min(cfg.block_k, c_in_p)
  kernel = functools.partial(
      conv_kernel, dims=(taps, hp * wp, wp, kh, kw), block_q=cfg.block_q, block_k=block_k,
      n_k=c_in_p // block_k, n_co=n_co, has_bias=b is not None,
      precision=None if interpret or xp.dtype != jnp.float32 else PRECISIONS[precision],
      has_residual=residual is not None, activation=activation,
      save_preactivation=save_preactivation)
  out = jax.ShapeDtypeStruct((n, q_total, c_out_p), xp.dtype)
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
  valid = lambda y: y[:, :q_valid].reshape(n, do, hp, wp, c_out_p)[:, :, :ho, :wo, :c_out]
  return tuple(map(valid, outs)) if save_preactivation else valid(outs)
