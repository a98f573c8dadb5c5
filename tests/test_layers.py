"""`medjax.layers`: the fast XLA convolution equals `lax.conv_general_dilated`,
`upconv2x` equals the transposed convolution (flax `ConvTranspose` layout)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import layers
from medjax_kernels import conv_xla as conv_xla_lib
from medjax_kernels.dispatch import CUSTOM_CALLS, export_for

from helpers import normal

RTOL = 1e-5


@pytest.fixture(autouse=True)
def _no_small_conv_shortcut(monkeypatch):
  """The tiny test convs would take the XLA conv (`SMALL_CONV_MACS`); test the rule's plans."""
  monkeypatch.setattr(conv_xla_lib, "SMALL_CONV_MACS", 0)


def _lax_conv(x, w, strides, padding):
  nd = x.ndim - 2
  sp = "DHW"[-nd:]
  return jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
      precision=jax.lax.Precision.HIGHEST)


def _close(a, b, rtol=RTOL):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(np.abs(b).max(), 1e-6)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def _inputs(x_shape, w_shape, seed=0):
  """x, w (scaled by 1/sqrt(fan-in)) and a seed for further draws (`normal(shape, kd + i)`)."""
  x = normal(x_shape, 3 * seed)
  w = normal(w_shape, 3 * seed + 1, scale=1 / np.sqrt(np.prod(w_shape[:-1])))
  return x, w, 3 * seed + 2


def _fwd_and_grads(f):
  """One jitted program: `f(x, w)` and its vjp with cotangent `dy`."""
  def run(x, w, dy):
    y, vjp = jax.vjp(f, x, w)
    return (y,) + vjp(dy)
  return jax.jit(run)


def _check_fwd_grads(f, x, w, strides, padding, kd):
  ref = lambda x, w: _lax_conv(x, w, strides, padding)
  dy = normal(jax.eval_shape(ref, x, w).shape, kd)
  for got, want in zip(_fwd_and_grads(f)(x, w, dy), _fwd_and_grads(ref)(x, w, dy)):
    _close(got, want)


CASES = [  # x shape, window, C_out, strides, padding
    ((2, 5, 6, 7, 3), (3, 3, 3), 4, (1, 1, 1), "SAME"),
    ((1, 5, 7, 9, 1), (3, 3, 3), 4, (1, 1, 1), "SAME"),  # C_in = 1: the first layer
    ((2, 6, 6, 6, 8), (3, 3, 3), 8, (2, 2, 2), "SAME"),
    ((1, 7, 6, 5, 6), (3, 3, 3), 5, (1, 1, 1), "VALID"),
    ((1, 7, 8, 9, 6), (5, 5, 5), 4, (1, 1, 1), "SAME"),
    ((1, 8, 6, 4, 5), (2, 2, 2), 7, (2, 2, 2), "VALID"),   # V-Net down conv
    ((2, 4, 5, 6, 8), (1, 1, 1), 3, (1, 1, 1), "SAME"),
    ((1, 3, 6, 7, 5), (1, 3, 3), 4, (1, 1, 1), "SAME"),  # anisotropic (nnU-Net plan)
    ((2, 9, 11, 3), (3, 3), 4, (1, 1), "SAME"),          # 2D
    ((2, 10, 8, 6), (3, 3), 5, (2, 2), "SAME"),
]


@pytest.mark.parametrize("x_shape,window,cout,strides,padding", CASES)
def test_conv_xla_equals_lax(x_shape, window, cout, strides, padding):
  """What `layers.conv_xla` runs on CPU (the `cpu_plan` rule)."""
  x, w, kd = _inputs(x_shape, window + (x_shape[-1], cout))
  f = lambda x, w: layers.conv_xla(x, w, strides=strides, padding=padding)
  _check_fwd_grads(f, x, w, strides, padding, kd)


@pytest.mark.parametrize("plan", [
    conv_xla_lib.Plan(f, dx, dw) for f, dx, dw in [
        ("im2col", "im2col", "im2col"), ("lax", "im2col_last", "shifted")]])
@pytest.mark.parametrize("x_shape,window,cout,strides,padding", [CASES[2], CASES[3], CASES[9]])
def test_every_formulation_equals_lax(x_shape, window, cout, strides, padding, plan):
  x, w, kd = _inputs(x_shape, window + (x_shape[-1], cout))
  pads = conv_xla_lib.explicit_padding(x_shape[1:-1], window, strides, padding)
  f = lambda x, w: conv_xla_lib.conv_mixed(x, w, strides, pads, plan)
  _check_fwd_grads(f, x, w, strides, padding, kd)


OUTSHIFT_CASES = [c for c in CASES if all(s == 1 for s in c[3])] + [
    ((1, 6, 7, 9, 4), (2, 3, 4), 3, (1, 1, 1), ((1, 0), (0, 2), (3, 1))),  # even, asymmetric
    ((2, 5, 6, 7, 6), (3, 3, 3), 3, (1, 1, 1), "SAME"),  # C_in = 2 C_out (decoder)
]


@pytest.mark.parametrize("x_shape,window,cout,strides,padding", OUTSHIFT_CASES)
def test_outshift_equals_lax(x_shape, window, cout, strides, padding):
  """`outshift` forward and its two hand-written gradients (the stride-1 rule)."""
  x, w, kd = _inputs(x_shape, window + (x_shape[-1], cout))
  pads = conv_xla_lib.explicit_padding(x_shape[1:-1], window, strides, padding)
  plan = conv_xla_lib.Plan("outshift", "outshift", "outshift")
  f = lambda x, w: conv_xla_lib.conv_mixed(x, w, strides, pads, plan)
  _check_fwd_grads(f, x, w, strides, pads, kd)


DEPTH2D_CASES = [c for c in OUTSHIFT_CASES if len(c[0]) == 5]


@pytest.mark.parametrize("x_shape,window,cout,strides,padding",
                         DEPTH2D_CASES[:2] + DEPTH2D_CASES[-3:])
def test_depth2d_equals_lax(x_shape, window, cout, strides, padding):
  """`depth2d` (a 3D conv as one 2D conv over depth-stacked channels) forward and its two
  hand-written gradients, stride 1 (asymmetric and even windows included)."""
  x, w, kd = _inputs(x_shape, window + (x_shape[-1], cout))
  pads = conv_xla_lib.explicit_padding(x_shape[1:-1], window, strides, padding)
  plan = conv_xla_lib.Plan("depth2d", "depth2d", "depth2d")
  f = lambda x, w: conv_xla_lib.conv_mixed(x, w, strides, pads, plan)
  _check_fwd_grads(f, x, w, strides, pads, kd)


def test_depth2d_forward_strided():
  x, w, _ = _inputs((2, 7, 6, 8, 5), (3, 3, 3, 5, 4))
  pads = conv_xla_lib.explicit_padding((7, 6, 8), (3, 3, 3), (2, 2, 2), "SAME")
  _close(conv_xla_lib.conv_depth2d(x, w, (2, 2, 2), pads), _lax_conv(x, w, (2, 2, 2), pads))


def test_outshift_forward_strided():
  x, w, _ = _inputs((2, 7, 6, 8, 5), (3, 3, 3, 5, 4))
  pads = conv_xla_lib.explicit_padding((7, 6, 8), (3, 3, 3), (2, 2, 2), "SAME")
  _close(conv_xla_lib.conv_outshift(x, w, (2, 2, 2), pads), _lax_conv(x, w, (2, 2, 2), pads))


@pytest.mark.parametrize("activation", [None, "prelu"])  # relu, leaky: test_kernel_conv3d
def test_conv_bias_residual_activation(activation):
  x, w, kd = _inputs((2, 4, 5, 6, 3), (3, 3, 3, 3, 4))
  b = normal((4,), kd)
  r = normal((2, 4, 5, 6, 4), kd + 1)
  slope = jnp.full((4,), 0.2)
  for kernels in ("xla", "auto"):
    y = layers.conv(x, w, b, strides=(1, 1, 1), padding="SAME", activation=activation,
                    residual=r, prelu_slope=slope, kernels=kernels)
    ref = layers.apply_activation(_lax_conv(x, w, (1, 1, 1), "SAME") + b + r,
                                  activation, slope)
    _close(y, ref)


def test_cpu_plan_rule():
  P = conv_xla_lib.Plan
  assert conv_xla_lib.cpu_plan((1, 1, 1), 16, 2) == P("im2col", "im2col", "im2col")
  assert conv_xla_lib.cpu_plan((3, 3, 3), 1, 16) == P("shifted", "shifted", "shifted")
  assert conv_xla_lib.cpu_plan((3, 3, 3), 16, 16) == P("outshift", "outshift", "outshift")
  assert conv_xla_lib.cpu_plan((5, 5, 5), 16, 16) == P("outshift", "outshift", "outshift")
  assert conv_xla_lib.cpu_plan((3, 3, 3), 64, 32) == P("outshift", "outshift", "outshift")
  assert conv_xla_lib.cpu_plan((3, 3, 3), 16, 16, strides=(2, 2, 2)) == P(
      "im2col_last", "shifted", "im2col_last")
  assert conv_xla_lib.cpu_plan((5, 5, 5), 16, 16, strides=(2, 2, 2)) == P(
      "im2col_last", "im2col_last", "im2col_last")
  assert conv_xla_lib.cpu_plan((3, 3), 16, 16) == P("lax", "lax", "lax")  # 2D: XLA's conv
  small = conv_xla_lib.SMALL_CONV_MACS - 1
  assert conv_xla_lib.cpu_plan((3, 3, 3), 16, 16, macs=small) == P("lax", "lax", "lax")


def test_outshift_refuses_strided_gradients():
  x, w, _ = _inputs((1, 6, 6, 6, 8), (3, 3, 3, 8, 8))
  pads = ((1, 1),) * 3
  with pytest.raises(ValueError, match="stride 1 only"):
    conv_xla_lib.outshift_input_grad(x, w, (2, 2, 2), pads, x[:, ::2, ::2, ::2])


def test_conv_xla_lowers_to_lax_conv_off_cpu():
  """On GPU/TPU the "xla" path is XLA's own convolution (cuDNN / TPU emitter)."""
  x, w, _ = _inputs((1, 4, 4, 4, 8), (3, 3, 3, 8, 8))
  f = jax.jit(lambda x, w: layers.conv_xla(x, w, strides=(1, 1, 1), padding="SAME"))
  for platform in ("cuda", "tpu"):
    text = jax.export.export(f, platforms=[platform])(x, w).mlir_module()
    assert "stablehlo.convolution" in text


@pytest.mark.parametrize("nd", [2, 3])
def test_upconv2x_equals_conv_transpose_and_flax(nd):
  x, w, kd = _inputs((2,) + (3, 4, 5)[:nd] + (3,), (2,) * nd + (3, 4))
  b = normal((4,), kd)
  sp = "DHW"[-nd:]
  dn = (f"N{sp}C", f"{sp}IO", f"N{sp}C")
  ref = lambda x, w: jax.lax.conv_transpose(x, w, (2,) * nd, "VALID", dimension_numbers=dn,
                                            precision=jax.lax.Precision.HIGHEST)
  flax_up = nn.ConvTranspose(4, (2,) * nd, strides=(2,) * nd, padding="VALID")
  flax_f = lambda x, w: flax_up.apply({"params": {"kernel": w, "bias": b}}, x)
  y = layers.upconv2x(x, w, b)
  _close(y, ref(x, w) + b)
  _close(y, flax_f(x, w))
  dy = normal(y.shape, kd + 2)
  g = jax.vjp(lambda x, w: layers.upconv2x(x, w, b), x, w)[1](dy)
  g_ref = jax.vjp(flax_f, x, w)[1](dy)
  _close(g[0], g_ref[0])
  _close(g[1], g_ref[1])
  # UpConv (the module) has the flax ConvTranspose parameter layout.
  m = layers.UpConv(4, spatial_dims=nd)
  params = {"params": {"kernel": w, "bias": b}}
  _close(m.apply(params, x), flax_up.apply(params, x))


def test_conv_pallas_3d_equals_xla():
  """kernels="pallas" (the Triton kernel, interpreted on CPU) = kernels="xla"."""
  x, w, kd = _inputs((1, 4, 5, 6, 3), (3, 3, 3, 3, 4))
  b = normal((4,), kd)
  f = lambda k: (lambda x, w: layers.conv(x, w, b, strides=(1, 1, 1), padding="SAME",
                                          activation="relu", kernels=k))
  dy = normal((1, 4, 5, 6, 4), kd + 3)
  for got, want in zip(_fwd_and_grads(f("pallas"))(x, w, dy), _fwd_and_grads(f("xla"))(x, w, dy)):
    _close(got, want)


def test_conv_auto_3d_carries_the_kernel_when_exported_for_gpu():
  x, w, _ = _inputs((1, 4, 4, 4, 16), (3, 3, 3, 16, 16))
  f = lambda x, w: layers.conv(x, w, strides=(1, 1, 1), padding="SAME", activation="relu",
                               kernels="auto")
  assert CUSTOM_CALLS["cuda"] in export_for(f, "cuda", x, w).mlir_module()
  text = export_for(f, "cpu", x, w).mlir_module()
  assert "triton" not in text and "stablehlo.dot_general" in text
