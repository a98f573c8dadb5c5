"""Named conv3d benchmark shapes from real 3D segmentation networks.

* V-Net (Milletari et al. 2016) on 128^3 patches, batch 2: stages of 16, 32,
  64, 128, 256 channels at 128^3, 64^3, 32^3, 16^3, 8^3, each a 5x5x5 conv +
  PReLU with the stage input added back (residual), joined by 2x2x2 stride-2
  down convs (+PReLU).
* 3D U-Net (Cicek et al. 2016) on 96^3 and 128^3 patches, batch 2: 3x3x3 conv
  + bias + ReLU at features 32..256 (each level halves the resolution), the
  decoder's first conv after concatenation (2f -> f), and the 1x1x1 head.
* "small": the layers of the default CPU model (3D U-Net features 16-32-64 on
  (2, 32, 64, 64) patches) and a few tiny ones; runnable on a laptop CPU.

Each entry: name -> dict(x=(N, D, H, W, C_in), k, c_out, stride, padding,
activation, residual).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _s(x, k, c_out, stride=1, padding="SAME", activation="relu", residual=False):
  return dict(x=tuple(x), k=k, c_out=c_out, stride=stride, padding=padding,
              activation=activation, residual=residual)


VNET = {}
for _i, (_c, _r) in enumerate(zip((16, 32, 64, 128, 256), (128, 64, 32, 16, 8))):
  VNET[f"vnet_stage{_i}_k5_{_c}ch_{_r}^3"] = _s((2, _r, _r, _r, _c), 5, _c, activation="prelu",
                                                residual=True)
  if _i < 4:
    VNET[f"vnet_down{_i}_k2s2_{_c}to{2 * _c}_{_r}^3"] = _s(
        (2, _r, _r, _r, _c), 2, 2 * _c, stride=2, padding="VALID", activation="prelu")

UNET3D = {}
for _p in (96, 128):
  for _i, _f in enumerate((32, 64, 128, 256)):
    _r = _p >> _i
    _cin = _f // 2 if _i else 1
    UNET3D[f"unet3d_{_p}_l{_i}_in_{_cin}to{_f}_{_r}^3"] = _s((2, _r, _r, _r, _cin), 3, _f)
    UNET3D[f"unet3d_{_p}_l{_i}_{_f}to{_f}_{_r}^3"] = _s((2, _r, _r, _r, _f), 3, _f)
    if _i < 3:
      UNET3D[f"unet3d_{_p}_l{_i}_dec_{2 * _f}to{_f}_{_r}^3"] = _s((2, _r, _r, _r, 2 * _f), 3, _f)
  UNET3D[f"unet3d_{_p}_head_32to3_{_p}^3"] = _s((2, _p, _p, _p, 32), 1, 3, activation=None)

SMALL = {
    # the default CPU model: 3D U-Net features (16, 32, 64), (2, 32, 64, 64) patches
    "cpu_unet_l0_in_1to16_32x64x64": _s((2, 32, 64, 64, 1), 3, 16),
    "cpu_unet_l0_16to16_32x64x64": _s((2, 32, 64, 64, 16), 3, 16),
    "cpu_unet_l0_dec_32to16_32x64x64": _s((2, 32, 64, 64, 32), 3, 16),
    "cpu_unet_l1_16to32_16x32x32": _s((2, 16, 32, 32, 16), 3, 32),
    "cpu_unet_l1_32to32_16x32x32": _s((2, 16, 32, 32, 32), 3, 32),
    "cpu_unet_l2_64to64_8x16x16": _s((2, 8, 16, 16, 64), 3, 64),
    "cpu_unet_head_16to2_32x64x64": _s((2, 32, 64, 64, 16), 1, 2, activation=None),
    "cpu_vnet_k5_16ch_32^3": _s((2, 32, 32, 32, 16), 5, 16, activation="prelu", residual=True),
    "cpu_vnet_down_k2s2_16to32_32^3": _s((2, 32, 32, 32, 16), 2, 32, stride=2,
                                         padding="VALID", activation="prelu"),
}

SHAPES = {**SMALL, **UNET3D, **VNET}


def out_shape(spec) -> tuple[int, ...]:
  n, *sp, _ = spec["x"]
  k, s = spec["k"], spec["stride"]
  if spec["padding"] == "SAME":
    o = [-(-d // s) for d in sp]
  else:
    o = [(d - k) // s + 1 for d in sp]
  return (n, *o, spec["c_out"])


def flops(spec, backward: bool = False) -> float:
  """Multiply-adds x2 of the convolution (x3 with both gradients)."""
  n, *o, c_out = out_shape(spec)
  f = 2.0 * n * np.prod(o) * spec["k"] ** 3 * spec["x"][-1] * c_out
  return 3 * f if backward else f


def bytes_moved(spec, dtype, backward: bool = False) -> float:
  """The fused kernel's memory floor: x, w, (residual), y once; backward adds
  dy read, dx and dw written, x re-read."""
  it = jnp.dtype(dtype).itemsize
  x = np.prod(spec["x"]) * it
  y = np.prod(out_shape(spec)) * it
  w = spec["k"] ** 3 * spec["x"][-1] * spec["c_out"] * it
  fwd = x + w + y * (2 if spec["residual"] else 1)
  return fwd + (2 * x + y + w) if backward else fwd


def make_inputs(spec, dtype="float32", seed: int = 0):
  """Random (never zero) x, w, b, residual, prelu_slope for one shape."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  c_in, c_out, k = spec["x"][-1], spec["c_out"], spec["k"]
  x = jax.random.normal(ks[0], spec["x"], jnp.float32).astype(dtype)
  w = (jax.random.normal(ks[1], (k, k, k, c_in, c_out)) / np.sqrt(k ** 3 * c_in)).astype(dtype)
  b = 0.1 * jax.random.normal(ks[2], (c_out,))
  r = (jax.random.normal(ks[3], out_shape(spec)).astype(dtype) if spec["residual"] else None)
  s = jnp.full((c_out,), 0.25) if spec["activation"] == "prelu" else None
  return x, w, b, r, s
