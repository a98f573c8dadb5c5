"""medjax_kernels.conv3d: the Pallas kernels (run by the Pallas interpreter on
CPU: the Triton kernel `pallas_gpu` and the Mosaic kernel `pallas_tpu` both
interpret on CPU) equal the pure-JAX reference, forward and gradients, and the
kernels lower for cuda and tpu through `jax.export` on a CPU-only machine.

With MEDJAX_KERNEL_TESTS=compiled (benchmarks/gpu_bench.sh, on a GPU with
JAX_PLATFORMS=cuda) the Triton kernel runs compiled instead of interpreted, float32
at the TF32 tolerance (the tensor cores round float32 products to TF32)."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from medjax_kernels import conv_xla
from medjax_kernels.conv3d import api, conv3d, reference
from medjax_kernels.dispatch import CUSTOM_CALLS, export_for

from helpers import normal, uniform

COMPILED = os.environ.get("MEDJAX_KERNEL_TESTS") == "compiled"
TOL = {jnp.float32: 5e-3 if COMPILED else 1e-5, jnp.bfloat16: 2e-2}


def _inputs(x_shape, k, c_out, dtype, activation, residual, stride, padding, seed):
  seeds = [6 * seed + i for i in range(6)]
  c_in = x_shape[-1]
  x = normal(x_shape, seeds[0], dtype)
  w = normal((k,) * 3 + (c_in, c_out), seeds[1], dtype, scale=1 / np.sqrt(k ** 3 * c_in))
  b = normal((c_out,), seeds[2])
  s = uniform((c_out,), seeds[3], 0.1, 0.4) if activation == "prelu" else None
  out_shape = jax.eval_shape(lambda x, w: reference.conv3d(x, w, stride=stride, padding=padding),
                             x, w).shape
  r = normal(out_shape, seeds[4], dtype) if residual else None
  dy = normal(out_shape, seeds[5], dtype)
  return x, w, b, r, s, dy


def _run(switch, args, dy, **kw):
  """`switch`: the `kernels=` or `backend=` keyword that selects the implementation."""
  def f(x, w, b, r, s):
    return conv3d(x, w, b, prelu_slope=s, residual=r, interpret=not COMPILED, **switch, **kw)

  @jax.jit
  def fwd_bwd(args, dy):
    y, vjp = jax.vjp(f, *args)
    return y, vjp(dy)
  return fwd_bwd(args, dy)


def _ref(args, dy, **kw):
  def f(x, w, b, r, s):
    return reference.conv3d(x.astype(jnp.float32), w.astype(jnp.float32), b, prelu_slope=s,
                            residual=None if r is None else r.astype(jnp.float32), **kw)
  y, vjp = jax.vjp(f, *args)
  return y, vjp(dy.astype(jnp.float32))


def _close(got, want, tol):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(np.abs(want).max(), 1e-3))


CASES = [  # x shape, k, C_out, stride, padding, activation, residual, dtype
    ((1, 5, 7, 9, 3), 3, 4, 1, "SAME", "relu", False, jnp.float32),  # 3D U-Net unit
    ((1, 5, 7, 9, 3), 3, 4, 1, "SAME", "prelu", True, jnp.float32),
    ((2, 3, 4, 5, 6), 1, 3, 1, "SAME", None, False, jnp.float32),  # 1x1x1 head
    ((1, 6, 6, 8, 5), 2, 4, 2, "VALID", "prelu", False, jnp.float32),  # V-Net down conv
    ((1, 7, 6, 5, 3), 3, 4, 2, "SAME", "leaky_relu", True, jnp.float32),
    ((1, 4, 5, 4, 2), 5, 3, 1, "SAME", "prelu", True, jnp.float32),  # V-Net stage conv
    ((1, 5, 6, 7, 4), 3, 5, 1, "SAME", "relu", True, jnp.bfloat16),
]
TPU_CASES = [CASES[1], CASES[3]]


@pytest.mark.parametrize("impl,case", [("pallas_gpu", c) for c in CASES] +
                         [("pallas_tpu", c) for c in TPU_CASES])
def test_kernel_matches_reference(impl, case):
  if COMPILED and impl == "pallas_tpu":
    pytest.skip("compiled mode runs on a GPU: the Mosaic kernel needs a TPU")
  x_shape, k, c_out, stride, padding, act, residual, dtype = case
  x, w, b, r, s, dy = _inputs(x_shape, k, c_out, dtype, act, residual, stride, padding,
                              seed=hash(case) % 1000)
  kw = dict(activation=act, stride=stride, padding=padding)
  args = (x, w, b, r, s)
  y, grads = _run(dict(backend=impl), args, dy, **kw)
  y_ref, grads_ref = _ref(args, dy, **kw)
  assert y.dtype == dtype and y.shape == y_ref.shape
  tol = TOL[dtype]
  _close(y, y_ref, tol)
  for name, g, g_ref in zip("xwbrs", grads, grads_ref):
    if g_ref is None:
      assert g is None, name
      continue
    # bf16: gradients are reductions over many bf16 products.
    _close(g, g_ref, tol if dtype == jnp.float32 else 4 * tol)


def test_auto_and_xla_on_cpu_equal_reference(monkeypatch):
  if COMPILED:
    pytest.skip("the CPU paths of the switch: covered by the CPU suite")
  monkeypatch.setattr(conv_xla, "SMALL_CONV_MACS", 0)  # the matmul formulations, not the XLA conv
  x, w, b, r, s, dy = _inputs((1, 5, 6, 7, 3), 3, 4, jnp.float32, "prelu", True, 1, "SAME", 0)
  kw = dict(activation="prelu", stride=1, padding="SAME")
  y_ref, g_ref = _ref((x, w, b, r, s), dy, **kw)
  for kernels in ("auto", "xla"):
    y, g = _run(dict(kernels=kernels), (x, w, b, r, s), dy, **kw)
    _close(y, y_ref, 1e-5)
    for a, c in zip(g, g_ref):
      _close(a, c, 1e-5)


def test_bad_arguments_raise():
  x = jnp.zeros((1, 4, 4, 4, 3))
  with pytest.raises(ValueError, match="C_in"):
    conv3d(x, jnp.zeros((3, 3, 3, 2, 4)))
  with pytest.raises(ValueError, match="prelu_slope"):
    conv3d(x, jnp.zeros((3, 3, 3, 3, 4)), activation="prelu")
  with pytest.raises(ValueError, match="stride"):
    conv3d(x, jnp.zeros((3, 3, 3, 3, 4)), stride=3)


# The configurations the models use: U-Net (k3 SAME bias+ReLU, k1 head),
# V-Net (k5 PReLU + residual, k2 stride-2 down conv with PReLU).
MODEL_CONFIGS = {
    "unet_k3_relu": dict(k=3, stride=1, padding="SAME", activation="relu", residual=False),
    "unet_k1_head": dict(k=1, stride=1, padding="SAME", activation=None, residual=False),
    "vnet_k5_prelu_residual": dict(k=5, stride=1, padding="SAME", activation="prelu",
                                   residual=True),
    "vnet_k2_s2_prelu": dict(k=2, stride=2, padding="VALID", activation="prelu", residual=False),
}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("name,kernels", [(n, "pallas") for n in MODEL_CONFIGS] +
                         [("unet_k3_relu", "auto"), ("vnet_k5_prelu_residual", "auto")])
def test_lowers_for_accelerators(name, kernels, platform):
  cfg = dict(MODEL_CONFIGS[name])
  k, residual = cfg.pop("k"), cfg.pop("residual")
  x, w, b, r, s, _ = _inputs((2, 8, 8, 8, 16), k, 32, jnp.float32, cfg["activation"], residual,
                             cfg["stride"], cfg["padding"], 0)

  def loss(x, w, b, r, s):
    y = conv3d(x, w, b, prelu_slope=s, residual=r, kernels=kernels, **cfg)
    return jnp.sum(y * y)

  fwd = lambda *a: conv3d(a[0], a[1], a[2], prelu_slope=a[4], residual=a[3], kernels=kernels,
                          **cfg)
  grad = jax.grad(loss, argnums=(0, 1, 2))
  for f, n_min in ((fwd, 1), (grad, 2)):  # grad: forward kernel + input-gradient kernel
    text = export_for(f, platform, x, w, b, r, s).mlir_module()
    calls = re.findall(r"custom_call @([\w$.]+)", text)
    assert calls.count(CUSTOM_CALLS[platform]) >= n_min, (calls, f)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_auto_keeps_a_first_tpu_layer_on_xla(platform):
  """kernels="auto" on TPU: C_in <= AUTO_XLA_MAX_C_IN takes XLA's conv (the Mosaic kernel
  pads channels in a copy), wider inputs the kernel; on GPU the Triton kernel (unpadded
  channels, masked loads) takes every layer; "pallas" forces the kernel either way."""
  w1 = jnp.ones((3, 3, 3, 1, 16), jnp.float32)
  x1 = jnp.ones((1, 8, 8, 8, 1), jnp.float32)
  for kernels, kernel_expected in (("auto", platform == "cuda"), ("pallas", True)):
    f = lambda x, w, kernels=kernels: conv3d(x, w, activation="relu", kernels=kernels)
    text = export_for(f, platform, x1, w1).mlir_module()
    assert (CUSTOM_CALLS[platform] in text) == kernel_expected, kernels
    assert ("stablehlo.convolution" in text) != kernel_expected, kernels
  w5 = jnp.ones((3, 3, 3, api.AUTO_XLA_MAX_C_IN + 1, 16), jnp.float32)
  x5 = jnp.ones((1, 8, 8, 8, api.AUTO_XLA_MAX_C_IN + 1), jnp.float32)
  text = export_for(lambda x, w: conv3d(x, w, kernels="auto"), platform, x5, w5).mlir_module()
  assert CUSTOM_CALLS[platform] in text


def _valid_ref(xp, w, b):
  return reference.conv3d(xp, w, b, padding="VALID")


def _np_inputs(x_shape, k, c_out, seed):
  """x, w, b from numpy (eager jax.random ops each compile: seconds per test)."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k,) * 3 + (x_shape[-1], c_out)) / np.sqrt(k ** 3 * x_shape[-1]),
                  jnp.float32)
  return x, w, jnp.asarray(rng.standard_normal(c_out), jnp.float32)


def test_split_k_and_channel_blocks_match_reference():
  """2x2x2 taps, C_in 40 in chunks of 16 (4 per tap, padded to 64), C_out 20 in two 16-channel
  blocks on the fastest grid axis, 32-row Q blocks: the interpreted kernel equals the
  reference."""
  from medjax_kernels.conv3d import config as config_lib, pallas_gpu
  xp, w, b = _np_inputs((1, 3, 5, 6, 40), 2, 20, 3)
  cfg = config_lib.GpuConfig(block_q=32, block_co=16, block_k=16, num_warps=4, num_stages=3)
  y = pallas_gpu.conv3d_valid(xp, w, b, activation=None, interpret=True, config=cfg)
  _close(y, _valid_ref(xp, w, b), 1e-5)


def test_gpu_tiles_narrow_the_channel_block_of_underfilled_layers():
  """Deep layers: block_q stops at 64 (wgmma's M), then block_co halves down to 16 while the
  grid is short of MIN_PROGRAMS; a large layer keeps the table's tile."""
  from medjax_kernels.conv3d import config as config_lib
  programs = lambda c, c_out, q, n: n * -(-q // c.block_q) * (c_out // c.block_co)
  deep = config_lib.gpu_config(128, 256, q_total=8 * 8 * 8, dtype_bytes=4, batch=2)
  assert (deep.block_q, deep.block_co) == (64, 16)
  assert programs(deep, 256, 512, 2) == 256  # 64-channel blocks would give 2 * 8 * 4 = 64
  big = config_lib.gpu_config(32, 32, q_total=130 * 130 * 128, dtype_bytes=4, batch=2)
  assert (big.block_q, big.block_co) == (128, 32)
  assert programs(big, 32, 130 * 130 * 128, 2) >= config_lib.MIN_PROGRAMS


def _triton_ir_text(fn, *args):
  """The Triton IR of the (single) Triton call of `fn` for cuda, as text."""
  from jax._src.lib.mlir import ir

  from benchmarks.compile_check.kernels import triton_calls
  (call,) = triton_calls(fn, args)
  ctx = ir.Context()
  ctx.allow_unregistered_dialects = True
  with ctx:
    return str(ir.Module.parse(call["ir"]))


def test_large_operands_take_64_bit_offsets_and_huge_volumes_are_refused():
  """Row indices are int32; Pallas scales them by the row stride in 64 bits once an operand
  exceeds 4 GiB (a batch of nine 128^3 x 64 float32 volumes), so no batch splitting is
  needed; a single volume of 2^31 voxels or more is refused with a one-line error."""
  from medjax_kernels.conv3d import pallas_gpu
  w = jax.ShapeDtypeStruct((3, 3, 3, 64, 64), jnp.float32)
  f = lambda x, w: pallas_gpu.conv3d(x, w, pads=((1, 1),) * 3)
  small = _triton_ir_text(f, jax.ShapeDtypeStruct((1, 128, 128, 128, 64), jnp.float32), w)
  large = _triton_ir_text(f, jax.ShapeDtypeStruct((9, 128, 128, 128, 64), jnp.float32), w)
  assert "xi64>" not in small and "xi64>" in large
  huge = jax.ShapeDtypeStruct((1, 1291, 1291, 1291, 1), jnp.float32)
  with pytest.raises(ValueError, match=r"more than 2\^31-1 voxels"):
    jax.eval_shape(lambda x: pallas_gpu.conv3d(x, jnp.ones((1, 1, 1, 1, 1))), huge)


def test_halo_inside_the_kernel_matches_reference_for_asymmetric_pads(monkeypatch):
  """The zero halo is masked inside the Triton kernel for any (lo, hi) pads per axis (as
  "SAME" with even windows needs), partial row blocks included; the weight-gradient kernel
  with channel tiles, tap groups and row splits that do not divide the shape (the batch
  folded into the rows) equals autodiff of the reference, also one batch element at a time."""
  from medjax_kernels.conv3d import config as config_lib, pallas_gpu, pallas_gpu_wgrad
  x, w, b = _np_inputs((2, 5, 6, 7, 8), 3, 20, 6)
  pads = ((2, 0), (1, 3), (0, 2))
  conv = lambda x, w: lax.conv_general_dilated(
      x, w, (1, 1, 1), list(pads), dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
      precision="highest")
  cfg = config_lib.GpuConfig(block_q=32, block_co=16, block_k=16)
  y = pallas_gpu.conv3d(x, w, b, pads=pads, activation=None, interpret=True, config=cfg)
  _close(y, conv(x, w) + b, 1e-5)
  z, vjp = jax.vjp(lambda w: conv(x, w), w)
  dz = jnp.asarray(np.random.default_rng(7).standard_normal(z.shape), jnp.float32)
  wcfg = pallas_gpu_wgrad.WgradConfig(block_q=16, block_ci=16, block_co=16, group=3, splits=5)
  dw = pallas_gpu_wgrad.conv3d_wgrad(x, dz, window=(3, 3, 3), pads=pads, interpret=True,
                                     config=wcfg)
  _close(dw, vjp(dz)[0], 1e-5)
  # past int32 rows for the whole batch (N * rows), one batch element per call, summed
  monkeypatch.setattr(pallas_gpu_wgrad, "MAX_ROWS", 5 * 6 * 7)  # one element's voxels
  jax.clear_caches()  # retrace conv3d_wgrad with the patched limit
  calls = jax.make_jaxpr(lambda x, dz: pallas_gpu_wgrad.conv3d_wgrad(
      x, dz, window=(3, 3, 3), pads=pads, interpret=True, config=wcfg))(x, dz).eqns
  inner = calls[0].params["jaxpr"].eqns
  assert sum(e.primitive.name == "jit" for e in inner) == 2
  dw1 = pallas_gpu_wgrad.conv3d_wgrad(x, dz, window=(3, 3, 3), pads=pads, interpret=True,
                                      config=wcfg)
  _close(dw1, vjp(dz)[0], 1e-5)


def test_precision_option_lowers_and_interprets_exactly():
  """Each float32 precision of the Triton kernel lowers for cuda; the interpreter is
  exact whatever the option (the TF32 rounding only exists on the GPU)."""
  x, w, b = _np_inputs((1, 4, 5, 6, 8), 3, 8, 5)
  for precision in ("default", "tf32x3", "highest"):
    f = lambda x, w, b, p=precision: conv3d(x, w, b, activation="relu", backend="pallas_gpu",
                                            precision=p)
    text = export_for(f, "cuda", x, w, b).mlir_module()
    assert "custom_call @" + CUSTOM_CALLS["cuda"] in text, precision
  y = conv3d(x, w, b, activation="relu", backend="pallas_gpu", precision="tf32x3",
             interpret=True)
  _close(y, reference.conv3d(x, w, b, activation="relu"), 1e-5)


def test_bad_precision_raises():
  with pytest.raises(ValueError, match=r"precision='tf16': expected one of \('default', "
                                       r"'tf32x3', 'highest'\)"):
    conv3d(jnp.zeros((1, 4, 4, 4, 3)), jnp.zeros((3, 3, 3, 3, 4)), precision="tf16")
