"""soft_dice_stats: Pallas kernels (in the interpreter) against the pure-JAX reference,
and lowering of the kernels for CUDA and TPU from this CPU machine.

Which interpreters run here:
  * the GPU (Triton) kernel in the generic Pallas interpreter
    (`kernels="pallas", interpret=True`);
  * the TPU (Mosaic) kernel in the TPU-semantics interpreter, `pltpu.InterpretParams`
    (`backend="pallas_tpu", interpret=True`).
Both are checked for outputs and for gradients w.r.t. logits (jax.vjp, random
cotangents on all three outputs). `jax.export` lowering for "cuda" / "tpu" is what
makes a kernel that cannot compile for an accelerator fail CI without one.

With MEDJAX_KERNEL_TESTS=compiled (benchmarks/gpu_bench.sh, on a GPU with
JAX_PLATFORMS=cuda) the `kernels="pallas"` checks run the Triton kernels compiled.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import medjax_kernels
from medjax_kernels.dispatch import CUSTOM_CALLS, export_for
from medjax_kernels.soft_dice import GpuConfig, TpuConfig, reference

TRITON_CALL = CUSTOM_CALLS["cuda"]
MOSAIC_CALL = CUSTOM_CALLS["tpu"]
COMPILED = os.environ.get("MEDJAX_KERNEL_TESTS") == "compiled"
RTOL = {jnp.float32: 1e-4 if COMPILED else 1e-5, jnp.bfloat16: 2e-2}


def _inputs(shape, k, dtype, seed, absent=(), label_dtype=jnp.int32):
  # numpy, not jax.random: eager jax ops each compile, which costs seconds per test.
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(3.0 * rng.standard_normal((*shape, k)), jnp.float32).astype(dtype)
  present = np.array([c for c in range(k) if c not in absent])
  labels = jnp.asarray(rng.choice(present, size=shape), label_dtype)
  cts = tuple(jnp.asarray(rng.standard_normal((shape[0], k)), jnp.float32) for _ in range(3))
  return logits, labels, cts


def _close(actual, expected, rtol):
  # Sums over V voxels: the absolute slack grows with the size of the largest entry.
  actual = np.asarray(actual, np.float32)
  expected = np.asarray(expected, np.float32)
  np.testing.assert_allclose(actual, expected, rtol=rtol,
                             atol=rtol * max(1.0, float(np.abs(expected).max())))


def _value_and_vjp(fn, logits, cts):
  """fn's outputs and the logits cotangent, in one jit (no eager op-by-op dispatch)."""
  @jax.jit
  def run(x, cts):
    out, vjp = jax.vjp(fn, x)
    return out, vjp(cts)[0]
  return run(logits, cts)


def _check_against_reference(shape, k, dtype, squared, activation, switch,
                             config=None, absent=(), seed=0, label_dtype=jnp.int32):
  """`switch`: the `kernels=` or `backend=` keyword that selects the kernel."""
  logits, labels, cts = _inputs(shape, k, dtype, seed, absent, label_dtype)
  kw = dict(squared=squared, activation=activation)
  out, dx = _value_and_vjp(
      lambda x: medjax_kernels.soft_dice_stats(
          x, labels, interpret=not (COMPILED and switch.get("kernels") == "pallas"),
          config=config, **switch, **kw),
      logits, cts)
  ref_out, ref_dx = _value_and_vjp(
      lambda x: reference.soft_dice_stats(x, labels, **kw), logits, cts)
  rtol = RTOL[dtype]
  for a, b in zip(out, ref_out):
    assert a.shape == (shape[0], k) and a.dtype == jnp.float32
    _close(a, b, rtol)
  assert dx.shape == logits.shape and dx.dtype == logits.dtype
  _close(dx, ref_dx, rtol)
  for c in absent:  # an absent class: nothing in the target, nothing in the overlap
    np.testing.assert_array_equal(np.asarray(out[2])[:, c], 0.0)
    np.testing.assert_array_equal(np.asarray(out[0])[:, c], 0.0)


# (shape without K, K, dtype, squared, activation, absent classes)
GPU_CASES = [
    ((2, 7, 9, 11), 5, jnp.float32, False, "softmax", ()),  # 3D, odd, K not a power of 2
    ((2, 7, 9, 11), 5, jnp.float32, True, "sigmoid", (2,)),
    ((1, 67, 81), 3, jnp.float32, True, "softmax", ()),  # 2D, 5427 voxels: tail block
    ((1, 67, 81), 3, jnp.bfloat16, False, "softmax", ()),
    ((3, 50), 2, jnp.float32, False, "sigmoid", ()),  # 1D, uint8 labels (see below)
    ((2, 6, 6, 6), 4, jnp.bfloat16, True, "softmax", (1, 3)),  # two empty classes
    ((2, 9, 10), 1, jnp.float32, True, "sigmoid", ()),  # one sigmoid channel, padded to 2
]


@pytest.mark.parametrize("shape,k,dtype,squared,activation,absent", GPU_CASES)
def test_gpu_kernel_interpret_matches_reference(shape, k, dtype, squared, activation, absent):
  label_dtype = jnp.uint8 if len(shape) == 2 else jnp.int32
  _check_against_reference(shape, k, dtype, squared, activation, dict(kernels="pallas"),
                           absent=absent, label_dtype=label_dtype, seed=len(shape) * k)


def test_gpu_kernel_interpret_small_blocks_many_programs():
  # 16 voxels per program: 36 programs per case, the last one mostly masked; K=14 -> 16.
  _check_against_reference((1, 33, 17), 14, jnp.float32, True, "softmax",
                           dict(kernels="pallas"), config=GpuConfig(block_v=16), seed=1)


TPU_CASES = [
    # 5427 voxels = 43 rows of 128 (last row partial) in blocks of 16 rows: 3 grid steps,
    # the last one partial; the accumulator lives across them.
    ((1, 67, 81), 3, jnp.bfloat16, False, "sigmoid", (), TpuConfig(block_rows=16)),
    ((2, 7, 9, 11), 5, jnp.float32, True, "softmax", (4,), None),
]


@pytest.mark.parametrize("shape,k,dtype,squared,activation,absent,config", TPU_CASES)
def test_tpu_kernel_interpret_matches_reference(shape, k, dtype, squared, activation, absent,
                                                config):
  _check_against_reference(shape, k, dtype, squared, activation, dict(backend="pallas_tpu"),
                           config=config, absent=absent)


def test_tpu_kernel_masks_the_partial_last_block():
  # The last of 3 blocks of 16 rows has 5 rows past the array. On a TPU they hold stale
  # VMEM; the interpreter fills them with zeros here (labels 0 would count as class 0)
  # and with NaN by default (probabilities must be masked, not multiplied by 0).
  from jax.experimental.pallas import tpu as pltpu
  from medjax_kernels.soft_dice import pallas_tpu
  logits, labels, _ = _inputs((1, 67, 81), 3, jnp.float32, 7)
  expected = jax.jit(reference.soft_dice_stats)(logits, labels)
  for fill in ("zero", "nan"):
    out = pallas_tpu.soft_dice_stats_fwd(
        logits, labels, config=TpuConfig(block_rows=16),
        interpret=pltpu.InterpretParams(uninitialized_memory=fill))
    for a, b in zip(out, expected):
      _close(a, b, 1e-5)


def test_reference_backward_formula_is_the_autodiff_gradient():
  logits, labels, cts = _inputs((2, 5, 6, 7), 4, jnp.float32, 3)
  for squared in (False, True):
    for activation in ("softmax", "sigmoid"):
      kw = dict(squared=squared, activation=activation)
      _, expected = _value_and_vjp(
          lambda x: reference.soft_dice_stats(x, labels, **kw), logits, cts)
      actual = jax.jit(lambda x, g, kw=kw: reference.soft_dice_stats_bwd(
          x, labels, g[0], g[1], **kw))(logits, cts)
      _close(actual, expected, 1e-5)


def test_reference_counts_by_hand():
  logits = jnp.log(jnp.array([[[0.25, 0.75], [0.5, 0.5], [1.0, 1e-30]]]))  # (1, 3, 2)
  labels = jnp.array([[1, 0, 0]])
  inter, psum, tsum = reference.soft_dice_stats(logits, labels)
  np.testing.assert_allclose(inter, [[1.5, 0.75]], rtol=1e-6)
  np.testing.assert_allclose(psum, [[1.75, 1.25]], rtol=1e-6)
  np.testing.assert_allclose(tsum, [[2.0, 1.0]])
  _, psq, _ = reference.soft_dice_stats(logits, labels, squared=True)
  np.testing.assert_allclose(psq, [[0.0625 + 0.25 + 1.0, 0.5625 + 0.25]], rtol=1e-6)


def _loss(kernels, labels):
  def loss(logits):
    inter, psum, tsum = medjax_kernels.soft_dice_stats(
        logits, labels, squared=True, kernels=kernels)
    return jnp.mean(1.0 - (2.0 * inter + 1e-5) / (psum + tsum + 1e-5))
  return loss


@pytest.mark.parametrize("platform,custom_call", [("cuda", TRITON_CALL), ("tpu", MOSAIC_CALL)])
@pytest.mark.parametrize("kernels", ["pallas", "auto"])
def test_lowers_for_accelerator(platform, custom_call, kernels):
  logits, labels, _ = _inputs((2, 7, 9, 11), 5, jnp.bfloat16, 0, label_dtype=jnp.uint8)
  fwd = export_for(lambda x: medjax_kernels.soft_dice_stats(x, labels, kernels=kernels),
                   platform, logits).mlir_module()
  train = export_for(jax.value_and_grad(_loss(kernels, labels)), platform,
                     logits).mlir_module()
  other = MOSAIC_CALL if custom_call == TRITON_CALL else TRITON_CALL
  assert fwd.count(custom_call) == 1 and other not in fwd
  # forward kernel + backward kernel (named by their pallas_call names)
  assert train.count(custom_call) == 2 and other not in train
  assert "soft_dice_stats_fwd" in train and "soft_dice_stats_bwd" in train


def test_auto_on_cpu_is_the_reference_without_custom_calls():
  logits, labels, _ = _inputs((2, 7, 9, 11), 5, jnp.float32, 4)
  text = jax.jit(lambda x: medjax_kernels.soft_dice_stats(x, labels)).lower(logits).as_text()
  assert "custom_call" not in text
  loss = _loss("auto", labels)
  value, grad = jax.jit(jax.value_and_grad(loss))(logits)
  ref_value, ref_grad = jax.jit(jax.value_and_grad(_loss("xla", labels)))(logits)
  _close(value, ref_value, 1e-6)
  _close(grad, ref_grad, 1e-5)
  out = medjax_kernels.soft_dice_stats(logits, labels, squared=True)
  for a, b in zip(out, reference.soft_dice_stats(logits, labels, squared=True)):
    _close(a, b, 1e-6)


def test_labels_get_no_gradient():
  logits, labels, cts = _inputs((1, 4, 4), 2, jnp.float32, 5)
  _, vjp = jax.vjp(lambda x, y: medjax_kernels.soft_dice_stats(x, y), logits, labels)
  _, dlabels = vjp(cts)
  assert dlabels.dtype == jax.dtypes.float0


@pytest.mark.parametrize("kwargs,message", [
    (dict(labels_shape=(2, 4)), "labels must have shape"),
    (dict(activation="relu"), "activation must be one of"),
    (dict(kernels="cuda"), "kernels='cuda': expected one of 'auto', 'xla', 'pallas'"),
    (dict(backend="cuda"), "backend='cuda': expected one of"),
    (dict(backend="pallas_gpu", activation=None), "backend='pallas_gpu' fuses"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, message):
  logits = jnp.zeros((2, 4, 4, 3))
  labels = jnp.zeros(kwargs.pop("labels_shape", (2, 4, 4)), jnp.int32)
  with pytest.raises(ValueError, match=message):
    medjax_kernels.soft_dice_stats(logits, labels, **kwargs)
