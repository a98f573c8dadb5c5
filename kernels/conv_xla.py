"""N-d channels-last convolution in pure XLA: four exact formulations, and the
fastest mix of them per platform (`conv_fast`).

Every convolution of the 1D/2D/3D models that is not a fused Pallas kernel
runs here (`medjax.layers.conv_xla`), and `medjax_kernels.conv3d`'s "xla" path
uses it too.

XLA's CPU convolution (`lax.conv_general_dilated`) is good at the forward pass
and the input gradient, but its weight gradient (a convolution whose "kernel"
is the whole output volume) is slow, and for 1-channel inputs even its forward
pass is slow. The same convolution can be written three other ways, all exact:

* ``"im2col"``: gather the `prod(window)` shifted views of the padded input
  into `(M, prod(window)*C_in)` patches and do one matmul with the reshaped
  kernel (`M` = output voxels).
* ``"im2col_last"``: im2col over the last spatial axis only (`K = w*C_in`),
  summing `prod(window[:-1])` matmuls: fewer bytes than full im2col, bigger
  contractions than shifted matmuls.
* ``"shifted"``: one `(M, C_in) @ (C_in, C_out)` matmul per tap, summed.

Their autodiff transposes are different programs too (e.g. the weight gradient
of "shifted" is `sum_t view_t(x)^T @ dy`, one matmul per tap with K = M), so
`conv_mixed` is a `jax.custom_vjp` that runs the forward pass, the input
gradient and the weight gradient each with its own formulation (the
transpose, by `jax.vjp`, of that formulation wrt the one argument), and
`cpu_plan` picks the triple from the channel counts. The measurements behind
the rule are in `benchmarks/RESULTS.md`.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Pads = tuple[tuple[int, int], ...]


def explicit_padding(spatial: Sequence[int], window: Sequence[int],
                     strides: Sequence[int], padding) -> Pads:
  """`(lo, hi)` per spatial dim, with XLA's "SAME"/"VALID" conventions."""
  if not isinstance(padding, str):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  padding = padding.upper()
  if padding == "VALID":
    return tuple((0, 0) for _ in spatial)
  if padding != "SAME":
    raise ValueError(f"padding={padding!r}: expected 'SAME', 'VALID' or (lo, hi) pairs")
  pads = []
  for n, k, s in zip(spatial, window, strides):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    pads.append((total // 2, total - total // 2))
  return tuple(pads)


def _dimension_numbers(nd: int):
  sp = "DHW"[-nd:] if nd <= 3 else "".join(chr(ord("a") + i) for i in range(nd))
  return (f"N{sp}C", f"{sp}IO", f"N{sp}C")


def _out_shape(x_shape, window, strides, pads):
  return tuple((n + lo + hi - k) // s + 1
               for n, k, s, (lo, hi) in zip(x_shape[1:-1], window, strides, pads))


def _views(xp: jax.Array, window, strides, out, axes):
  """Strided views of the padded input `xp` for every tap over `axes`."""
  nd = xp.ndim - 2
  for tap in itertools.product(*(range(window[a]) for a in axes)):
    start, limit, step = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
    for a, t in zip(axes, tap):
      start[1 + a] = t
      limit[1 + a] = t + (out[a] - 1) * strides[a] + 1
      step[1 + a] = strides[a]
    for a in range(nd):
      if a not in axes:  # already sliced to `out` by the caller
        limit[1 + a] = xp.shape[1 + a]
    yield tap, lax.slice(xp, start, limit, step)


def _matmul(a: jax.Array, b: jax.Array, out_dtype) -> jax.Array:
  """`a (..., K) @ b (K, O)` with float32 accumulation."""
  y = lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())),
                      preferred_element_type=jnp.float32)
  return y.astype(out_dtype)


def conv_lax(x, w, strides, pads):
  """`lax.conv_general_dilated`, channels-last."""
  return lax.conv_general_dilated(
      x, w.astype(x.dtype), tuple(strides), pads,
      dimension_numbers=_dimension_numbers(x.ndim - 2),
      preferred_element_type=jnp.float32).astype(x.dtype)


def conv_im2col(x, w, strides, pads):
  """One matmul of the `(M, prod(window)*C_in)` patches with the kernel."""
  nd = x.ndim - 2
  window = w.shape[:nd]
  out = _out_shape(x.shape, window, strides, pads)
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  views = [v for _, v in _views(xp, window, strides, out, tuple(range(nd)))]
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return _matmul(patches, w.reshape(-1, w.shape[-1]).astype(x.dtype), x.dtype)


def conv_shifted(x, w, strides, pads):
  """One `(M, C_in) @ (C_in, C_out)` matmul per tap, summed in float32."""
  nd = x.ndim - 2
  window = w.shape[:nd]
  out = _out_shape(x.shape, window, strides, pads)
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  y = None
  for tap, v in _views(xp, window, strides, out, tuple(range(nd))):
    z = _matmul(v, w[tap].astype(x.dtype), jnp.float32)
    y = z if y is None else y + z
  return y.astype(x.dtype)


def conv_im2col_last(x, w, strides, pads):
  """im2col over the last spatial axis (K = window[-1]*C_in), matmuls over the rest."""
  nd = x.ndim - 2
  window = w.shape[:nd]
  out = _out_shape(x.shape, window, strides, pads)
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  cols = [v for _, v in _views(xp, window, strides, out, (nd - 1,))]
  cols = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  wl = w.reshape(window[:-1] + (-1, w.shape[-1])).astype(x.dtype)
  y = None
  for tap, v in _views(cols, window, strides, out, tuple(range(nd - 1))):
    z = _matmul(v, wl[tap], jnp.float32)
    y = z if y is None else y + z
  return y.astype(x.dtype)


FORMULATIONS: dict[str, Callable] = {
    "lax": conv_lax,
    "im2col": conv_im2col,
    "im2col_last": conv_im2col_last,
    "shifted": conv_shifted,
}


class Plan(NamedTuple):
  """Which formulation computes the forward pass, dL/dx and dL/dw."""
  fwd: str
  dx: str
  dw: str


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_mixed(x: jax.Array, w: jax.Array, strides: tuple[int, ...], pads: Pads,
               plan: Plan) -> jax.Array:
  """Convolution whose forward and two gradients use the formulations in `plan`."""
  return FORMULATIONS[plan.fwd](x, w, strides, pads)


def _mixed_fwd(x, w, strides, pads, plan):
  return conv_mixed(x, w, strides, pads, plan), (x, w)


def _mixed_bwd(strides, pads, plan, res, dy):
  x, w = res
  f_dx, f_dw = FORMULATIONS[plan.dx], FORMULATIONS[plan.dw]
  dx = jax.vjp(lambda x_: f_dx(x_, w, strides, pads), x)[1](dy)[0]
  dw = jax.vjp(lambda w_: f_dw(x, w_, strides, pads), w)[1](dy)[0]
  return dx, dw


conv_mixed.defvjp(_mixed_fwd, _mixed_bwd)


# Below this many multiply-adds a convolution takes ~1 ms whatever the
# formulation, and the XLA conv compiles 3-5x faster (~0.2 s against ~0.75 s
# per layer for the three matmul formulations): smoke runs and tests keep it.
SMALL_CONV_MACS = 2e7


def cpu_plan(window: Sequence[int], c_in: int, c_out: int, macs: float = float("inf")) -> Plan:
  """The formulation per direction on CPU, from channel counts and window.

  Measured on a 2-core AMD EPYC (jax 0.10.2), fwd+bwd of one conv+ReLU, batch 2
  (min of 5, ms; lax = autodiff of `lax.conv_general_dilated`, mixed = this plan):

  ======================  =====  =====
  layer                     lax  mixed
  ======================  =====  =====
  32x64x64 1->8 k3 (dw)     245     35
  32x64x64 8->8 k3          954    588
  32x64x64 16->16 k3       2100   1158
  48^3 16->16 k3            692    477
  16x32x32 32->32 k3        444    284
  8x16x16 64->64 k3         108     71
  16x32x32 32->32 k5       2120   1151
  32x64x64 8->16 k2 s2      538     13
  32x64x64 16->2 k1          28      8
  ======================  =====  =====

  * 1x1 windows: a plain matmul every way (`im2col` has a single tap).
  * C_in <= 4 (the first layer of a network): shifted matmuls every way; XLA's
    convolution of a 1-channel volume is ~100x slower than 27 fused
    multiply-adds.
  * otherwise: forward by `im2col_last`, input gradient by `shifted` (its
    transpose: one `dy @ w_t^T` per tap, added into the padded input), weight
    gradient by `im2col_last` (transpose: `cols^T @ dy`). Windows of more than
    27 taps (5x5x5) take the input gradient by `im2col_last` too: 125 shifted
    matmuls take 8 s to compile against 3 s.
  * fewer than `SMALL_CONV_MACS` multiply-adds (`macs`): the XLA conv every way
    (compile time dominates).
  `c_out` is part of the signature so the rule can grow without an API change.

  Cost: compiling the matmul formulations takes ~0.75 s per layer against
  ~0.2 s: the default 3D U-Net's first step goes from 5 s to 16 s, every later
  step from 0.97 s to 0.44 s.
  """
  del c_out
  if macs < SMALL_CONV_MACS:
    return Plan("lax", "lax", "lax")
  if all(k == 1 for k in window):
    return Plan("im2col", "im2col", "im2col")
  if c_in <= 4:
    return Plan("shifted", "shifted", "shifted")
  taps = math.prod(window)
  return Plan("im2col_last", "shifted" if taps <= 27 else "im2col_last", "im2col_last")


def conv_fast_cpu(x: jax.Array, w: jax.Array, strides: Sequence[int], padding) -> jax.Array:
  """Channels-last N-d convolution (no bias) with the `cpu_plan` formulations.

  Equal to `lax.conv_general_dilated(x, w, strides, padding,
  dimension_numbers=("N...C", "...IO", "N...C"))`, forward and gradients.
  """
  nd = x.ndim - 2
  strides = tuple(int(s) for s in strides)
  window = tuple(w.shape[:nd])
  pads = explicit_padding(x.shape[1:-1], window, strides, padding)
  out = _out_shape(x.shape, window, strides, pads)
  macs = x.shape[0] * math.prod(out) * math.prod(window) * x.shape[-1] * w.shape[-1]
  plan = cpu_plan(window, x.shape[-1], w.shape[-1], macs)
  if plan == Plan("lax", "lax", "lax"):
    return conv_lax(x, w, strides, pads)
  return conv_mixed(x, w, strides, pads, plan)


def conv_fast(x: jax.Array, w: jax.Array, strides: Sequence[int], padding) -> jax.Array:
  """The fastest pure-XLA convolution for the platform it is lowered for.

  CPU: `conv_fast_cpu`; CUDA/ROCm/TPU: `lax.conv_general_dilated` (cuDNN and
  the TPU convolution emitter are already good at every direction).
  """
  nd = x.ndim - 2
  strides = tuple(int(s) for s in strides)
  pads = explicit_padding(x.shape[1:-1], tuple(w.shape[:nd]), strides, padding)
  return lax.platform_dependent(
      x, w,
      cpu=lambda x, w: conv_fast_cpu(x, w, strides, pads),
      default=lambda x, w: conv_lax(x, w, strides, pads))
