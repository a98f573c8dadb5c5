"""The one kernel switch (`medjax_kernels.dispatch`), from a model down to the kernels.

* `by_platform` picks its branch by the platform the function is lowered for;
* a 3D U-Net with `kernels="pallas"` and its soft-Dice loss, exported from this CPU
  machine for `cuda` / `tpu`, carry the compiled Triton / Mosaic kernels (the custom
  call), not the Pallas interpreter; lowered for CPU they run the interpreter and give
  the numbers of `kernels="xla"`;
* a bad switch value gets the same one-line error from every entry point.

Per-kernel lowering and interpreter checks are in test_kernel_conv3d.py and
test_kernel_soft_dice.py; this file checks the switch around them.
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import medjax_kernels
from medjax import layers, losses, models
from medjax_kernels import dispatch
from medjax_kernels.dispatch import CUSTOM_CALLS, export_for

from helpers import init

# The Pallas interpreter lowers a kernel's grid to a stablehlo.while loop of dynamic
# slices; the compiled kernels are one custom call each, and nothing else in these
# programs loops.
INTERPRETER_LOOP = "stablehlo.while"
BRANCHES = {"gpu": 1, "gpu_interpreted": 2, "tpu": 3, "tpu_interpreted": 4, "xla": 5}


def _branch_taken(kernels, interpret, platform):
  """Which callable `by_platform` stages out when lowered for `platform`."""
  tag = lambda name: (lambda x, interpret=None: x + 100 * BRANCHES[name])
  kernel = lambda name: (lambda x, interpret: tag(name + "_interpreted" * interpret)(x))
  f = lambda x: dispatch.by_platform(x, kernels=kernels, interpret=interpret,
                                     gpu=kernel("gpu"), tpu=kernel("tpu"), xla=tag("xla"))
  text = export_for(f, platform, jnp.zeros((), jnp.int32)).mlir_module()
  (taken,) = [name for name, i in BRANCHES.items() if f"dense<{100 * i}>" in text]
  return taken


@pytest.mark.parametrize("kernels,interpret,expected", [
    ("xla", False, dict(cpu="xla", cuda="xla", tpu="xla")),
    ("auto", False, dict(cpu="xla", cuda="gpu", tpu="tpu")),
    ("auto", True, dict(cpu="xla", cuda="gpu_interpreted", tpu="tpu_interpreted")),
    ("pallas", False, dict(cpu="gpu_interpreted", cuda="gpu", tpu="tpu")),
    ("pallas", True, dict(cpu="gpu_interpreted", cuda="gpu_interpreted",
                          tpu="gpu_interpreted")),
])
def test_by_platform_follows_the_lowering_platform(kernels, interpret, expected):
  for platform, branch in expected.items():
    assert _branch_taken(kernels, interpret, platform) == branch, platform


X_SHAPE = (1, 8, 16, 16, 1)


def _model(kernels):
  return models.UNet(spatial_dims=3, features=(4, 8), num_classes=2, kernels=kernels)


@pytest.fixture(scope="module")
def data():
  """Parameters (they do not depend on `kernels`), an input volume and labels."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(X_SHAPE), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, X_SHAPE[:-1]), jnp.int32)
  params = init(_model("xla"), x, seed=0, train=False)
  return params, x, labels


def _forward(kernels):
  return lambda params, x: _model(kernels).apply(params, x, train=False)


def _loss_and_grad(kernels):
  def loss(params, x, labels):
    logits = _model(kernels).apply(params, x, train=True)
    return losses.soft_dice(logits, labels, kernels=kernels)
  return jax.value_and_grad(loss)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_pallas_model_exported_for_an_accelerator_carries_the_compiled_kernels(data, platform):
  params, x, labels = data
  forward = export_for(_forward("pallas"), platform, params, x).mlir_module()
  train = export_for(_loss_and_grad("pallas"), platform, params, x, labels).mlir_module()
  for text in (forward, train):
    assert CUSTOM_CALLS[platform] in text
    assert INTERPRETER_LOOP not in text
  assert "stablehlo.convolution" not in forward  # every conv is a kernel
  # the soft-Dice kernels, forward and backward (named by their pallas_call names)
  assert "soft_dice_stats_fwd" in train and "soft_dice_stats_bwd" in train


def test_pallas_lowered_for_cpu_interprets_and_equals_xla(data):
  params, x, labels = data
  text = export_for(_loss_and_grad("pallas"), "cpu", params, x, labels).mlir_module()
  assert INTERPRETER_LOOP in text and "custom_call @" + CUSTOM_CALLS["cuda"] not in text
  (value, grads), (ref_value, ref_grads) = (
      jax.jit(_loss_and_grad(k))(params, x, labels) for k in ("pallas", "xla"))
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(jax.jit(_forward("pallas"))(params, x),
                             jax.jit(_forward("xla"))(params, x), rtol=1e-5, atol=1e-6)


def test_a_bad_switch_value_is_one_line_from_every_entry_point(data):
  params, x, labels = data
  logits = jnp.zeros(X_SHAPE[:-1] + (2,))
  w = jnp.zeros((3, 3, 3, 1, 4))
  entry_points = {
      "layers.conv": lambda: layers.conv(x, w, strides=(1, 1, 1), padding="SAME",
                                         kernels="bogus"),
      "models.UNet": lambda: _model("bogus").apply(params, x, train=False),
      "losses.soft_dice": lambda: losses.soft_dice(logits, labels, kernels="bogus"),
      "medjax_kernels.conv3d": lambda: medjax_kernels.conv3d(x, w, kernels="bogus"),
      "medjax_kernels.soft_dice_stats": lambda: medjax_kernels.soft_dice_stats(
          logits, labels, kernels="bogus"),
  }
  for name, call in entry_points.items():
    with pytest.raises(ValueError) as error:
      call()
    assert str(error.value) == "kernels='bogus': expected one of 'auto', 'xla', 'pallas'", name
  assert layers.check_kernels is dispatch.check_kernels  # one check


def test_no_default_backend_test_in_the_library():
  """The kernel choice follows the lowering platform, never the process's backend."""
  root = pathlib.Path(__file__).resolve().parents[1]
  offenders = [str(p.relative_to(root)) for d in ("medjax", "kernels")
               for p in sorted((root / d).rglob("*.py"))
               if "default_backend(" in p.read_text()]
  assert not offenders, offenders
