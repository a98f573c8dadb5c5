"""The halo-blocked Mosaic conv (`medjax_kernels.conv3d.pallas_tpu`), in the Pallas
interpreter on CPU: forced row and depth tiles (overlapping input windows, a
padded last tile) equal the reference convolution, forward and, through
`conv3d(backend="pallas_tpu")`, both gradients; `plan` keeps the U-Net 128^3
layer within the VMEM budget (whole 130x130 planes exceed a TPU v5e's scoped VMEM
at compile time)."""
import jax
import jax.numpy as jnp
import numpy as np

from medjax_kernels.conv3d import conv3d, pallas_tpu, reference

from helpers import normal


def _rand(shape, seed, dtype=jnp.float32):
  return normal(shape, seed, dtype)


def test_tiles_match_reference():
  """Forced tiles of a 2x2x2 window (the stride-2 path's): 6 output planes x 60 rows
  (Wp = 10) in 3 row tiles of 24 (the last 12 rows padding; each window 24 + 16 halo
  rows) x 2 depth tiles of 4 planes (the last half padding), residual + PReLU."""
  xp = _rand((1, 7, 7, 10, 5), 0)
  w = _rand((2, 2, 2, 5, 12), 1) / np.sqrt(40)
  b, r, s = _rand((12,), 2), _rand((1, 6, 6, 9, 12), 3), jnp.linspace(-0.2, 0.4, 12)
  y = pallas_tpu.conv3d_valid(xp, w, b, r, s, activation="prelu", interpret=True,
                              block_rows=24, block_depth=4)
  want = reference.conv3d(xp, w, b, activation="prelu", prelu_slope=s, residual=r,
                          padding="VALID")
  assert y.shape == want.shape == (1, 6, 6, 9, 12)
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)
  # the pair (output, pre-activation) from the same tiles
  y2, z = pallas_tpu.conv3d_valid(xp, w, b, r, s, activation="prelu", interpret=True,
                                  block_rows=24, block_depth=4, save_preactivation=True)
  want_z = reference.conv3d(xp, w, b, residual=r, padding="VALID")
  np.testing.assert_allclose(np.asarray(y2), np.asarray(want), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(z), np.asarray(want_z), rtol=1e-5, atol=1e-5)


def test_forward_and_gradients_match_reference(dtype=jnp.float32, tol=1e-5):
  """`conv3d(backend="pallas_tpu")`: the forward (which also writes PReLU's pre-activation
  for the backward) and the input gradient run the tiled kernel (default plan), stride 2
  included."""
  x = _rand((1, 6, 6, 6, 4), 4, dtype)
  w = (_rand((3, 3, 3, 4, 8), 5) / np.sqrt(108)).astype(dtype)
  b, s = _rand((8,), 6), jnp.full((8,), 0.2)
  dy = _rand((1, 3, 3, 3, 8), 7, dtype)
  kw = dict(activation="prelu", stride=2, padding="SAME")

  def run(f):
    y, vjp = jax.vjp(lambda x, w, b, s: f(x, w, b, prelu_slope=s, **kw), x, w, b, s)
    return (y,) + vjp(dy)

  got = run(lambda *a, **k: conv3d(*a, backend="pallas_tpu", interpret=True, **k))
  want = run(lambda x, w, *a, **k: reference.conv3d(
      x.astype(jnp.float32), w.astype(jnp.float32), *a, **k))
  for name, g, h in zip(("y", "dx", "dw", "db", "dslope"), got, want):
    g, h = np.asarray(g, np.float64), np.asarray(h, np.float64)
    scale = max(np.abs(h).max(), 1.0)
    assert np.abs(g - h).max() <= tol * scale * (4 if name != "y" else 1), name


def test_plan_fits_the_unet_128_layer():
  """3x3x3 32->32 on 128^3 (Wp = 130): whole planes were 128 x 130 rows; the plan
  tiles rows so that one program's VMEM footprint is within the budget, the last
  tile balanced, and 1x1x1 heads on small planes take several planes per program."""
  p = pallas_tpu.plan(do=128, q_rows=128 * 130, halo=264, kd=3, taps=9, c_in=32,
                      block_co=32, itemsize=4, has_residual=False)
  assert p.vmem_bytes <= pallas_tpu.VMEM_BUDGET and p.block_depth == 1
  assert p.n_rows * p.block_rows >= 128 * 130 > (p.n_rows - 1) * p.block_rows
  assert p.block_rows <= pallas_tpu.MAX_BLOCK_ROWS and p.block_rows % 8 == 0
  assert p.n_rows * p.block_rows - 128 * 130 < 8 * p.n_rows  # balanced, not half empty
  small = pallas_tpu.plan(do=8, q_rows=64, halo=0, kd=1, taps=1, c_in=16, block_co=8,
                          itemsize=4, has_residual=False)
  assert (small.block_depth, small.n_depth, small.n_rows) == (8, 1, 1)
