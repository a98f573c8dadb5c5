"""`conv3d`: fused 3D convolution + bias + residual + activation, with dispatch.

`kernels=` is the switch of `medjax_kernels.dispatch` ("auto", "xla",
"pallas"), decided by the platform the function is lowered for:

* the Pallas kernels: Triton (`pallas_gpu`) on cuda/rocm, Mosaic
  (`pallas_tpu`) on tpu; with "pallas" on any other platform (CPU), the
  Triton kernel in the Pallas interpreter (slow: for correctness checks);
* the XLA path: `medjax_kernels.conv_xla.conv_fast` (on CPU a mix of im2col /
  shifted matmuls chosen per direction; elsewhere `lax.conv_general_dilated`),
  then the epilogue in XLA.

`backend=` ("pallas_gpu", "pallas_tpu", "reference": `reference.conv3d`)
runs that implementation whatever the platform, for tests and benchmarks.

What is Pallas and what is XLA in the Pallas implementations:

* forward: Pallas, one kernel: conv + bias + residual + activation; nothing
  intermediate written. Triton: the input unpadded, the "SAME"/"VALID" zero halo
  masked and the stride applied inside the kernel (row gathers), the output written on
  the output grid (no XLA pad before it, no slice after it). Mosaic: a stride-1 kernel
  over an input padded in XLA; stride 2 is an XLA space-to-depth of the padded input
  (2x2x2 parity phases as channels) and a rearranged kernel with window `ceil(k/2)`
  (exact: the missing taps have zero weights). Channels are padded in XLA only where a
  layer's count does not suit the matmul units (Triton: a power of two >= 16).
* backward (`jax.custom_vjp`): the activation derivative, the bias and
  PReLU-slope gradients are XLA (for PReLU the forward kernel, Triton and Mosaic,
  also writes the pre-activation; ReLU/leaky ReLU read the mask off the saved
  output). Triton: the input gradient is the same kernel in the transposed geometry
  (`pallas_gpu.conv3d_input_grad`: the forward's w read in place, halo and stride
  in-kernel), the weight gradient a Triton kernel (`pallas_gpu_wgrad`: channels-last,
  input dtype, float32 accumulation). Mosaic: the input gradient is the same kernel on
  the `k-1`-padded `dz` with the flipped, transposed kernel; the weight gradient is XLA
  (one `lax.conv_general_dilated` of the input with `dz` as the kernel); JAX
  differentiates the XLA space-to-depth/padding ops as usual.

References: V-Net (Milletari et al. 2016): 5x5x5 convs, PReLU, residual
stages, 2x2x2 stride-2 down convs; 3D U-Net (Cicek et al. 2016): 3x3x3 conv
+ bias + ReLU.
"""
from __future__ import annotations

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from medjax_kernels import conv_xla, dispatch
from medjax_kernels.conv3d import pallas_gpu, pallas_gpu_wgrad, pallas_tpu, reference

Pads = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

# Triton kernel names in the compiled program (what `benchmarks.compile_check` and GPU
# profiles show): the forward conv, the input gradient, the weight gradient.
KERNEL_NAMES = {"fwd": "medjax_conv3d", "dx": "medjax_conv3d_dx",
                "dw": pallas_gpu_wgrad.KERNEL_NAME}


# With kernels="auto" on TPU, inputs of at most this many channels (a network's first layer:
# 1-4 modalities) take XLA's convolution instead of the Mosaic kernel, which pads C_in to a
# sublane tile (and VMEM tiles to 128 lanes) in a copy of the input written before the
# kernel. The Triton kernel reads unpadded channels (masked loads), so on GPU they take the
# kernel: deviceless H100 compile of the 128^3 1->32 layer's forward + backward
# (benchmarks/RESULTS.md, static roofline) 2,738 MB float32 / 1,371 MB bfloat16 against
# cuDNN's 2,735 / 2,785 MB (padding C_in 1->16 in a copy would move 7,089 / 3,679 MB).
# kernels="pallas" forces the kernel either way.
AUTO_XLA_MAX_C_IN = 4


def _check(x, w, b, activation, prelu_slope, stride, padding, kernels, backend, precision):
  dispatch.check_kernels(kernels)
  if precision not in pallas_gpu.PRECISIONS:
    raise ValueError(f"precision={precision!r}: expected one of {tuple(pallas_gpu.PRECISIONS)}")
  dispatch.check_backend(backend)
  if x.ndim != 5 or w.ndim != 5:
    raise ValueError(f"conv3d expects x (N,D,H,W,C_in) and w (kd,kh,kw,C_in,C_out), "
                     f"got {x.shape} and {w.shape}")
  if w.shape[3] != x.shape[4]:
    raise ValueError(f"w has C_in={w.shape[3]} but x has {x.shape[4]} channels")
  if activation not in reference.ACTIVATIONS:
    raise ValueError(f"activation={activation!r}: expected one of {reference.ACTIVATIONS}")
  if activation == "prelu" and prelu_slope is None:
    raise ValueError("activation='prelu' needs prelu_slope (C_out,)")
  if stride not in (1, 2):
    raise ValueError(f"stride={stride}: expected 1 or 2")
  if not (padding in ("SAME", "VALID") or is_explicit_padding(padding)):
    raise ValueError(f"padding={padding!r}: expected 'SAME', 'VALID' or three (lo, hi) "
                     "pairs of non-negative ints")
  if b is not None and b.shape != (w.shape[4],):
    raise ValueError(f"b has shape {b.shape}, expected ({w.shape[4]},)")


def is_explicit_padding(padding) -> bool:
  """Whether `padding` is explicit zero padding: three `(lo, hi)` pairs of ints >= 0."""
  return (isinstance(padding, tuple) and len(padding) == 3
          and all(isinstance(p, tuple) and len(p) == 2
                  and all(isinstance(v, int) and v >= 0 for v in p) for p in padding))


def _conv3d_xla(x, w, b, residual, prelu_slope, *, activation, stride, padding):
  z = conv_xla.conv_fast(x, w.astype(x.dtype), (stride,) * 3, padding).astype(jnp.float32)
  if b is not None:
    z = z + b.astype(jnp.float32)
  if residual is not None:
    z = z + residual.astype(jnp.float32)
  return reference.activate(z, activation, prelu_slope).astype(x.dtype)


def _space_to_depth_stride2(xp: jax.Array, w: jax.Array, out: tuple[int, ...]):
  """Stride-2 VALID conv of `xp` -> stride-1 VALID conv of parity phases.

  `y[o] = sum_t xp[2o+t] w[t] = sum_{u,p} xp[2(o+u)+p] w[2u+p]`: phase `p` of
  the input becomes channels, the kernel becomes `w2[u, p] = w[2u+p]` (zero
  where `2u+p >= k`), window `ceil(k/2)`.
  """
  n, c_in, c_out = xp.shape[0], xp.shape[-1], w.shape[-1]
  k = w.shape[:3]
  k2 = tuple((kk + 1) // 2 for kk in k)
  size = tuple(2 * (o + kk - 1) for o, kk in zip(out, k2))
  pads = [(0, 0)] + [(0, max(s - d, 0)) for s, d in zip(size, xp.shape[1:4])] + [(0, 0)]
  xp = jnp.pad(xp, pads)[:, :size[0], :size[1], :size[2]]
  xs = xp.reshape(n, size[0] // 2, 2, size[1] // 2, 2, size[2] // 2, 2, c_in)
  xs = xs.transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(n, size[0] // 2, size[1] // 2,
                                                    size[2] // 2, 8 * c_in)
  w = jnp.pad(w, [(0, 2 * kk2 - kk) for kk, kk2 in zip(k, k2)] + [(0, 0), (0, 0)])
  w2 = w.reshape(k2[0], 2, k2[1], 2, k2[2], 2, c_in, c_out)
  w2 = w2.transpose(0, 2, 4, 1, 3, 5, 6, 7).reshape(k2 + (8 * c_in, c_out))
  return xs, w2


def _activation_grads(dy, saved, activation, slope, b, residual):
  """Gradient of the pre-activation `z` (float32) and of b, the residual and the PReLU
  slope, from `dy` and what the forward saved: the output `y` (ReLU, leaky ReLU: their
  masks read off y) or, for PReLU, `z` itself (its sign is not y's where the slope is
  negative)."""
  g = dy.astype(jnp.float32)
  dslope = None
  if activation == "relu":
    g = jnp.where(saved > 0, g, 0.0)
  elif activation == "leaky_relu":
    g = jnp.where(saved >= 0, g, reference.LEAKY_RELU_SLOPE * g)
  elif activation == "prelu":
    z = saved.astype(jnp.float32)
    dslope = jnp.sum(jnp.where(z < 0, g * z, 0.0), axis=(0, 1, 2, 3)).astype(slope.dtype)
    g = jnp.where(z >= 0, g, slope.astype(jnp.float32) * g)
  db = None if b is None else jnp.sum(g, axis=(0, 1, 2, 3)).astype(b.dtype)
  dres = None if residual is None else g.astype(residual.dtype)
  return g, db, dres, dslope


def _flipped(w, dtype):
  """The input gradient's kernel: spatially flipped, C_in and C_out swapped."""
  return jnp.flip(w, (0, 1, 2)).swapaxes(3, 4).astype(dtype)


# --- Triton (GPU): unpadded input, the zero halo inside the kernels --------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _fused_gpu(x, w, b, residual, prelu_slope, pads, stride, activation, interpret, precision):
  return pallas_gpu.conv3d(x, w, b, residual, prelu_slope, pads=pads, stride=stride,
                           activation=activation, interpret=interpret, precision=precision)


def _fused_gpu_fwd(x, w, b, residual, prelu_slope, pads, stride, activation, interpret,
                   precision):
  if activation == "prelu":
    # The kernel also writes the pre-activation, which the PReLU backward needs: one
    # more tile store instead of a second convolution in the backward pass.
    y, z = pallas_gpu.conv3d(x, w, b, residual, prelu_slope, pads=pads, stride=stride,
                             activation=activation, interpret=interpret,
                             precision=precision, save_preactivation=True)
    return y, (x, w, b, residual, prelu_slope, z)
  y = _fused_gpu(x, w, b, residual, prelu_slope, pads, stride, activation, interpret,
                 precision)
  return y, (x, w, b, residual, prelu_slope, y)


def _fused_gpu_bwd(pads, stride, activation, interpret, precision, res, dy):
  x, w, b, residual, slope, saved = res
  g, db, dres, dslope = _activation_grads(dy, saved, activation, slope, b, residual)
  dz = g.astype(x.dtype)
  # Input gradient: the same kernel, transposed geometry, the forward's w read in place.
  dx = pallas_gpu.conv3d_input_grad(dz, w, in_dims=x.shape[1:4], pads=pads, stride=stride,
                                    interpret=interpret, precision=precision,
                                    name=KERNEL_NAMES["dx"])
  # Weight gradient: the Triton kernel of `pallas_gpu_wgrad` (channels-last, input dtype).
  dw = pallas_gpu_wgrad.conv3d_wgrad(x, dz, window=w.shape[:3], pads=pads, stride=stride,
                                     interpret=interpret, precision=precision,
                                     out_dtype=w.dtype)
  return dx, dw, db, dres, dslope


_fused_gpu.defvjp(_fused_gpu_fwd, _fused_gpu_bwd)


# --- Mosaic (TPU): a padded input --------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused_tpu(xp, w, b, residual, prelu_slope, activation, interpret):
  return pallas_tpu.conv3d_valid(xp, w, b, residual, prelu_slope, activation=activation,
                                 interpret=interpret)


def _fused_tpu_fwd(xp, w, b, residual, prelu_slope, activation, interpret):
  if activation == "prelu":  # the kernel also writes the pre-activation (as on GPU)
    y, z = pallas_tpu.conv3d_valid(xp, w, b, residual, prelu_slope, activation=activation,
                                   interpret=interpret, save_preactivation=True)
    return y, (xp, w, b, residual, prelu_slope, z)
  y = _fused_tpu(xp, w, b, residual, prelu_slope, activation, interpret)
  return y, (xp, w, b, residual, prelu_slope, y)


def _fused_tpu_bwd(activation, interpret, res, dy):
  xp, w, b, residual, slope, saved = res
  kernel = functools.partial(pallas_tpu.conv3d_valid, interpret=interpret)
  g, db, dres, dslope = _activation_grads(dy, saved, activation, slope, b, residual)
  dz = g.astype(xp.dtype)
  k = w.shape[:3]
  # Input gradient: full correlation with the flipped, transposed kernel (Pallas).
  dz_pad = jnp.pad(dz, [(0, 0)] + [(kk - 1, kk - 1) for kk in k] + [(0, 0)])
  dxp = kernel(dz_pad, _flipped(w, xp.dtype), activation=None).astype(xp.dtype)
  # Weight gradient (XLA): dw[t, ci, co] = sum_{n,o} xp[n, o + t, ci] dz[n, o, co], one
  # convolution of the input with dz as the kernel (N contracted, C_in as its batch), in the
  # input dtype with float32 accumulation (not the autodiff transpose of a float32 conv).
  dw = lax.conv_general_dilated(
      xp, dz, (1, 1, 1), "VALID", dimension_numbers=("CDHWN", "IDHWO", "DHWNC"),
      preferred_element_type=jnp.float32 if xp.dtype == jnp.float32 else None
  ).astype(w.dtype)
  return dxp, dw, db, dres, dslope


_fused_tpu.defvjp(_fused_tpu_fwd, _fused_tpu_bwd)


def _conv3d_pallas(x, w, b, residual, prelu_slope, *, activation, stride, padding,
                   backend, interpret, precision="default"):
  window = w.shape[:3]
  pads = conv_xla.explicit_padding(x.shape[1:4], window, (stride,) * 3, padding)
  w = w.astype(x.dtype)
  if backend == "pallas_gpu":  # halo and stride inside the kernels
    return _fused_gpu(x, w, b, residual, prelu_slope, tuple(pads), stride, activation,
                      interpret, precision)
  xp = jnp.pad(x, ((0, 0),) + pads + ((0, 0),))
  if stride == 2:
    out = tuple((d - kk) // 2 + 1 for d, kk in zip(xp.shape[1:4], window))
    xp, w = _space_to_depth_stride2(xp, w, out)
  return _fused_tpu(xp, w, b, residual, prelu_slope, activation, interpret)


@functools.partial(jax.jit, static_argnames=("activation", "stride", "padding", "kernels",
                                             "interpret", "backend", "precision"))
def conv3d(x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *,
           activation: Optional[str] = None, prelu_slope: Optional[jax.Array] = None,
           residual: Optional[jax.Array] = None, stride: int = 1,
           padding: Union[str, Pads] = "SAME", kernels: str = "auto", interpret: bool = False,
           backend: Optional[str] = None, precision: str = "default") -> jax.Array:
  """`activation(conv3d(x, w, stride, padding) + b + residual)`, fused on GPU/TPU.

  Args:
    x: `(N, D, H, W, C_in)`, float32 or bfloat16 (float32 accumulation).
    w: `(kd, kh, kw, C_in, C_out)`; any window (the models use 1, 2, 3, 5).
    b: `(C_out,)` or None.
    activation: None, "relu", "leaky_relu" (slope 0.01) or "prelu".
    prelu_slope: `(C_out,)`, with "prelu" only.
    residual: `(N, D_out, H_out, W_out, C_out)` added before the activation.
    stride: 1 or 2 (all spatial dims).
    padding: "SAME", "VALID" (XLA's conventions) or explicit zero padding
      `((lo, hi),) * 3` per spatial dim, tuples of ints (e.g. a depth slab whose halo rows
      are already in `x`: `((0, 0), (1, 1), (1, 1))`, `medjax.spatial`).
    kernels: "auto", "xla" or "pallas" (`medjax_kernels.dispatch`); "auto" takes XLA's
      conv on TPU for inputs of at most `AUTO_XLA_MAX_C_IN` channels.
    interpret: run the Pallas kernels in the interpreter (any platform; slow).
    backend: None, or "pallas_gpu" / "pallas_tpu" / "reference" to run that
      implementation whatever the platform (tests, benchmarks); overrides `kernels`.
    precision: float32 products of the Triton kernel (bfloat16 inputs are unaffected):
      "default" -- TF32 tensor cores (10-bit mantissa products, float32 accumulation;
      relative error ~1e-3, what cuDNN and XLA do by default on sm_80+), "tf32x3" --
      three TF32 products per product (~float32 accuracy on tensor cores, ~3x the
      math), "highest" -- exact float32 FMAs (no tensor cores). The interpreter is
      always exact; the Mosaic and XLA paths ignore it (XLA follows
      `jax_default_matmul_precision`).
  Returns:
    `(N, D_out, H_out, W_out, C_out)` in `x.dtype`.
  """
  _check(x, w, b, activation, prelu_slope, stride, padding, kernels, backend, precision)
  if activation != "prelu":
    prelu_slope = None  # ignored, as in `reference.activate`
  if backend == "reference":
    return reference.conv3d(x, w, b, activation=activation, prelu_slope=prelu_slope,
                            residual=residual, stride=stride, padding=padding)
  arrays = (x, w, b, residual, prelu_slope)
  static = dict(activation=activation, stride=stride, padding=padding)
  if backend is not None:
    return _conv3d_pallas(*arrays, backend=backend, interpret=interpret, precision=precision,
                          **static)
  xla = functools.partial(_conv3d_xla, **static)
  tpu = functools.partial(_conv3d_pallas, backend="pallas_tpu", **static)
  if kernels == "auto" and x.shape[-1] <= AUTO_XLA_MAX_C_IN:
    tpu = lambda *a, interpret: xla(*a)  # a first layer: no channel padding copy
  return dispatch.by_platform(
      *arrays, kernels=kernels, interpret=interpret,
      gpu=functools.partial(_conv3d_pallas, backend="pallas_gpu", precision=precision, **static),
      tpu=tpu, xla=xla)
