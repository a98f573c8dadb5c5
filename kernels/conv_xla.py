"""N-d channels-last convolution in pure XLA: five exact formulations, and the
fastest mix of them per platform (`conv_fast`).

Every convolution of the 1D/2D/3D models that is not a fused Pallas kernel
runs here (`medjax.layers.conv_xla`), and `medjax_kernels.conv3d`'s "xla" path
uses it too.

XLA's CPU convolution (`lax.conv_general_dilated`) is good at the forward pass
and the input gradient, but its weight gradient (a convolution whose "kernel"
is the whole output volume) is slow, and for 1-channel inputs even its forward
pass is slow. The same convolution can be written four other ways, all exact:

* ``"im2col"``: gather the `prod(window)` shifted views of the padded input
  into `(M, prod(window)*C_in)` patches and do one matmul with the reshaped
  kernel (`M` = output voxels).
* ``"im2col_last"``: im2col over the last spatial axis only (`K = w*C_in`),
  summing `prod(window[:-1])` matmuls: fewer bytes than full im2col, bigger
  contractions than shifted matmuls.
* ``"shifted"``: one `(M, C_in) @ (C_in, C_out)` matmul per tap, summed.
* ``"outshift"``: im2col over the last axis, ONE matmul giving the partial
  output of every other tap at every padded position, then one fused sum of
  shifted slices of that product: no per-tap copy of the input (the default
  for stride-1 3D convs; its two gradients are written out, not autodiffed).

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


def _last_axis_cols(xp: jax.Array, window, strides, out) -> jax.Array:
  """The padded input's `window[-1]` shifted views along the last spatial axis,
  concatenated on channels: `(N, *padded[:-1], out[-1], window[-1]*C)`."""
  nd = xp.ndim - 2
  cols = [v for _, v in _views(xp, window, strides, out, (nd - 1,))]
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def conv_im2col_last(x, w, strides, pads):
  """im2col over the last spatial axis (K = window[-1]*C_in), matmuls over the rest."""
  nd = x.ndim - 2
  window = w.shape[:nd]
  out = _out_shape(x.shape, window, strides, pads)
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  cols = _last_axis_cols(xp, window, strides, out)
  wl = w.reshape(window[:-1] + (-1, w.shape[-1])).astype(x.dtype)
  y = None
  for tap, v in _views(cols, window, strides, out, tuple(range(nd - 1))):
    z = _matmul(v, wl[tap], jnp.float32)
    y = z if y is None else y + z
  return y.astype(x.dtype)


def _outer_taps(window) -> list[tuple[int, ...]]:
  return list(itertools.product(*(range(k) for k in window[:-1])))


def conv_outshift(x, w, strides, pads):
  """Shifted sum of partial outputs: im2col over the last spatial axis, then ONE
  matmul `(M', window[-1]*C_in) @ (window[-1]*C_in, T*C_out)` that gives every
  outer tap's (the `T = prod(window[:-1])` taps over the other axes) partial
  output at every padded position, then one fused sum of the `T` shifted slices.

  The other formulations materialise a shifted copy of the input per tap (XLA
  does not pass strided views to a matmul); here the shifts are applied to the
  matmul's output inside one elementwise fusion, so the bytes moved are about
  `(2*window[-1]*C_in + 2*T*C_out) * M'` instead of `T` copies of the patches,
  and the matmul has `T*C_out` columns instead of `C_out` (a better shape for
  the CPU GEMM: 16 -> 144 for a 3x3x3 conv with 16 outputs).
  """
  nd = x.ndim - 2
  window = w.shape[:nd]
  out = _out_shape(x.shape, window, strides, pads)
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  cols = _last_axis_cols(xp, window, strides, out)
  taps = _outer_taps(window)
  c_out = w.shape[-1]
  wm = jnp.moveaxis(w.reshape(len(taps), -1, c_out), 0, 1).reshape(-1, len(taps) * c_out)
  z = _matmul(cols, wm.astype(x.dtype), jnp.float32)
  y = None
  for i, (_, v) in enumerate(_views(z, window, strides, out, tuple(range(nd - 1)))):
    v = v[..., i * c_out:(i + 1) * c_out]  # tap i's partial output, shifted into place
    y = v if y is None else y + v
  return y.astype(x.dtype)


def conv_depth2d(x, w, strides, pads):
  """A 3D convolution as ONE 2D convolution: the `window[0]` depth-shifted (and
  depth-strided) views of the padded input are stacked on the channel axis,
  `(N, D_out, H, W, window[0]*C_in)`, the depth becomes part of the batch, and
  XLA's 2D convolution `(N*D_out, H, W, window[0]*C_in) * (kh, kw, window[0]*C_in, C_out)`
  does the rest.

  XLA's CPU backend has a fast 2D convolution (Eigen's spatial convolution packs
  its patches block by block in cache, forward and both gradients) and a slow 3D
  one; this keeps the 3D models on the 2D path. The stacked input is
  `window[0]` times the input (3x for a 3x3x3 conv), against the 9x-wide partial
  output of `outshift`. Its autodiff gradients are again 2D convolutions (input
  gradient, then the transpose of the stacking: a sum of `window[0]` shifted
  slices; weight gradient from the re-stacked input), so `conv_mixed` takes them
  by `jax.vjp`. A 1xkxk window is a plain 2D convolution over `N*D` slices.
  """
  if x.ndim != 5:
    raise ValueError(f"depth2d: 3D convolutions only, got input of rank {x.ndim}")
  n, _, h, wd, c_in = x.shape
  kd, kh, kw, _, c_out = w.shape
  sd = strides[0]
  d_out = _out_shape(x.shape, w.shape[:3], strides, pads)[0]
  xp = jnp.pad(x, ((0, 0), pads[0], (0, 0), (0, 0), (0, 0))) if pads[0] != (0, 0) else x
  views = [lax.slice_in_dim(xp, t, t + (d_out - 1) * sd + 1, sd, axis=1) for t in range(kd)]
  stack = views[0] if kd == 1 else jnp.concatenate(views, axis=-1)
  w2 = jnp.moveaxis(w, 0, 2).reshape(kh, kw, kd * c_in, c_out)  # channel index = tap*C_in + c
  y = conv_lax(stack.reshape(n * d_out, h, wd, kd * c_in), w2, tuple(strides[1:]),
               tuple(pads[1:]))
  return y.reshape((n, d_out) + y.shape[1:])


def _conv2d_nhwc(x, w, pads) -> jax.Array:
  """A stride-1 2D convolution in the one layout XLA's CPU backend hands to Eigen:
  input `(B, H, W, C)`, kernel `(kh, kw, C, O)`, output `(B, H', W', O)`."""
  return lax.conv_general_dilated(x, w, (1, 1), tuple(pads),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  preferred_element_type=jnp.float32)


def depth2d_input_grad(x, w, strides, pads, dy):
  """dL/dx of a stride-1 `conv_depth2d`: the 2D convolution of `dy` with the flipped,
  transposed stacked kernel (dL/d stack), then the transpose of the stacking: the
  `window[0]` channel groups summed back at their depth offsets.

  Written out rather than left to autodiff so that every convolution keeps the
  NHWC/HWIO layout: autodiff's transposed convolutions carry permuted dimension
  numbers, which XLA's CPU backend computes with a naive loop nest when they are
  not rewritten (inside a U-Net's training step they were not: 10-20x slower)."""
  if any(s != 1 for s in strides):
    raise ValueError(f"depth2d input gradient: stride 1 only, got strides={strides}")
  n, d, h, wd, c_in = x.shape
  kd, kh, kw, _, c_out = w.shape
  d_out = dy.shape[1]
  w2t = jnp.flip(jnp.moveaxis(w, 0, 2).reshape(kh, kw, kd * c_in, c_out), (0, 1))
  tpads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads[1:]))
  ds = _conv2d_nhwc(dy.reshape((n * d_out,) + dy.shape[2:]).astype(w.dtype),
                    jnp.swapaxes(w2t, 2, 3).astype(dy.dtype), tpads)
  ds = ds.reshape(n, d_out, h, wd, kd, c_in)
  lo, hi = pads[0]
  dxp = None  # gradient of the depth-padded input, (N, d_out + kd - 1, H, W, C_in)
  for t in range(kd):
    part = lax.pad(ds[..., t, :], jnp.zeros((), ds.dtype),
                   ((0, 0, 0), (t, kd - 1 - t, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)))
    dxp = part if dxp is None else dxp + part
  # crop the depth padding (a negative `hi` pad: rows no window reached get zeros)
  dx = lax.pad(dxp, jnp.zeros((), dxp.dtype),
               ((0, 0, 0), (-lo, -hi, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)))
  return dx.astype(x.dtype)


def depth2d_weight_grad(x, w, strides, pads, dy):
  """dL/dw of a stride-1 `conv_depth2d` as one NHWC/HWIO 2D convolution: the stacked
  input with its channels as the batch and the `N*D` slices as features, convolved
  with `dy` whose `(H, W)` is the window: `(kd*C_in, kh, kw, C_out)`, rearranged
  to `(kd, kh, kw, C_in, C_out)` (see `depth2d_input_grad` for why it is written out)."""
  if any(s != 1 for s in strides):
    raise ValueError(f"depth2d weight gradient: stride 1 only, got strides={strides}")
  n = x.shape[0]
  kd, kh, kw, c_in, c_out = w.shape
  d_out = dy.shape[1]
  xp = jnp.pad(x, ((0, 0), pads[0], (0, 0), (0, 0), (0, 0))) if pads[0] != (0, 0) else x
  views = [lax.slice_in_dim(xp, t, t + d_out, axis=1) for t in range(kd)]
  stack = views[0] if kd == 1 else jnp.concatenate(views, axis=-1)  # (N, D', H, W, kd*C_in)
  lhs = jnp.transpose(stack.reshape((n * d_out,) + stack.shape[2:]), (3, 1, 2, 0))
  rhs = jnp.transpose(dy.reshape((n * d_out,) + dy.shape[2:]), (1, 2, 0, 3)).astype(x.dtype)
  g = _conv2d_nhwc(lhs, rhs, pads[1:])  # (kd*C_in, kh, kw, C_out)
  g = jnp.transpose(g.reshape(kd, c_in, kh, kw, c_out), (0, 2, 3, 1, 4))
  return g.astype(w.dtype)


def outshift_input_grad(x, w, strides, pads, dy):
  """dL/dx of a stride-1 convolution, as the `conv_outshift` convolution of
  `dy` with the flipped kernel (channels swapped) and the complementary padding."""
  nd = x.ndim - 2
  window = w.shape[:nd]
  if any(s != 1 for s in strides):
    raise ValueError(f"outshift input gradient: stride 1 only, got strides={strides}")
  wt = jnp.swapaxes(jnp.flip(w, tuple(range(nd))), -1, -2)
  tpads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(window, pads))
  # a negative pad (an input row no output window reaches) crops: lax.pad allows it
  dyp = lax.pad(dy, jnp.zeros((), dy.dtype),
                ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in tpads) + ((0, 0, 0),))
  return conv_outshift(dyp, wt, (1,) * nd, ((0, 0),) * nd).astype(x.dtype)


def outshift_weight_grad(x, w, strides, pads, dy):
  """dL/dw of a stride-1 convolution with the roles of `conv_outshift` swapped:
  the last-axis patches of the padded input against ONE concatenation of `dy`
  placed at every outer tap's offset in the padded grid, one matmul with
  K = M' and `T*C_out` columns (instead of `T` copies of the patches)."""
  nd = x.ndim - 2
  window = w.shape[:nd]
  if any(s != 1 for s in strides):
    raise ValueError(f"outshift weight gradient: stride 1 only, got strides={strides}")
  out = dy.shape[1:-1]
  xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
  cols = _last_axis_cols(xp, window, strides, out)  # (N, *padded[:-1], out[-1], kw*C_in)
  zero = jnp.zeros((), dy.dtype)
  placed = []
  for tap in _outer_taps(window):
    config = [(0, 0, 0)] + [(t, xp.shape[1 + a] - out[a] - t, 0) for a, t in enumerate(tap)]
    placed.append(lax.pad(dy, zero, config + [(0, 0, 0), (0, 0, 0)]))
  dys = placed[0] if len(placed) == 1 else jnp.concatenate(placed, axis=-1)
  dims = tuple(range(nd + 1))
  g = lax.dot_general(cols.astype(dy.dtype), dys, ((dims, dims), ((), ())),
                      preferred_element_type=jnp.float32)  # (kw*C_in, T*C_out)
  c_out = w.shape[-1]
  g = jnp.moveaxis(g.reshape(-1, len(placed), c_out), 1, 0)
  return g.reshape(w.shape).astype(w.dtype)


FORMULATIONS: dict[str, Callable] = {
    "lax": conv_lax,
    "im2col": conv_im2col,
    "im2col_last": conv_im2col_last,
    "shifted": conv_shifted,
    "outshift": conv_outshift,
    "depth2d": conv_depth2d,
}

# Gradients written directly instead of by `jax.vjp` of a formulation (the
# autodiff transpose of `conv_outshift` would scatter `dy` into T zero-filled
# copies of the partial outputs and add them).
INPUT_GRADIENTS: dict[str, Callable] = {"outshift": outshift_input_grad,
                                         "depth2d": depth2d_input_grad}
WEIGHT_GRADIENTS: dict[str, Callable] = {"outshift": outshift_weight_grad,
                                          "depth2d": depth2d_weight_grad}


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
  if plan.dx in INPUT_GRADIENTS:
    dx = INPUT_GRADIENTS[plan.dx](x, w, strides, pads, dy)
  else:
    f_dx = FORMULATIONS[plan.dx]
    dx = jax.vjp(lambda x_: f_dx(x_, w, strides, pads), x)[1](dy)[0]
  if plan.dw in WEIGHT_GRADIENTS:
    dw = WEIGHT_GRADIENTS[plan.dw](x, w, strides, pads, dy)
  else:
    f_dw = FORMULATIONS[plan.dw]
    dw = jax.vjp(lambda w_: f_dw(x, w_, strides, pads), w)[1](dy)[0]
  return dx, dw


conv_mixed.defvjp(_mixed_fwd, _mixed_bwd)


# Below this many multiply-adds a convolution takes ~1 ms whatever the
# formulation, and the XLA conv compiles 3-5x faster (~0.2 s against ~0.75 s
# per layer for the three matmul formulations): smoke runs and tests keep it.
SMALL_CONV_MACS = 2e7


def cpu_plan(window: Sequence[int], c_in: int, c_out: int, macs: float = float("inf"),
             strides: Sequence[int] | None = None) -> Plan:
  """The formulation per direction on CPU, from the window, channels and strides.

  The rule follows the per-layer timings of every formulation in each direction
  on a 2-core x86 CPU (the U-Net and V-Net layers at 16^3-64^3, batch 2;
  `benchmarks/RESULTS.md`, "The CPU convolution rule"):

  * fewer than `SMALL_CONV_MACS` multiply-adds (`macs`): the XLA conv every way
    (compile time dominates).
  * 1D/2D: the XLA conv every way. XLA's CPU 2D convolution is 5-10x faster
    than any of the matmul formulations here; its 3D convolution is not.
  * 1x1x1 windows: a plain matmul every way (`im2col` has a single tap).
  * C_in <= 4 (the first layer of a network): shifted matmuls every way; XLA's
    convolution of a 1-channel volume is ~10-100x slower than 27 fused
    multiply-adds.
  * stride 1: `outshift` every way. (XLA's own input gradient is a little
    faster alone when C_in >= 2 C_out, 73 against 86 ms at 32^3 64->32, but
    inside the U-Net's training step the same convolutions took 1.5-2.8 s
    each: 10-20x their time alone.)
  * strided (V-Net's 2x2x2 stride-2 down convs): forward by `im2col_last`, input
    gradient by `shifted` (`im2col_last` above 27 taps, for compile time), weight
    gradient by `im2col_last`.
  """
  del c_out  # in the signature so the rule can use it without an API change
  strides = tuple(strides) if strides is not None else (1,) * len(window)
  if macs < SMALL_CONV_MACS or len(window) != 3:
    return Plan("lax", "lax", "lax")
  if all(k == 1 for k in window):
    return Plan("im2col", "im2col", "im2col")
  if c_in <= 4:
    return Plan("shifted", "shifted", "shifted")
  if all(s == 1 for s in strides):
    return Plan("outshift", "outshift", "outshift")
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
  plan = cpu_plan(window, x.shape[-1], w.shape[-1], macs, strides)
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
