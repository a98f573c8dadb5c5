"""Mixed precision (config.dtype) and rematerialisation (config.remat) of the U-Nets and V-Net."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import unet3d_synthetic, vnet_synthetic
from medjax.errors import InputError
from medjax.train import loop
from medjax.train.model_factory import build_model


def _batch(shape, seed=0):
  """A CT-like batch: a box of +40 HU-equivalent contrast under noise of the same size."""
  rng = np.random.default_rng(seed)
  labels = np.zeros(shape, np.int32)
  sl = (slice(None),) + tuple(slice(s // 4, 3 * s // 4) for s in shape[1:])
  labels[sl] = 1
  image = labels * 0.4 + rng.normal(scale=0.4, size=shape)
  return jnp.asarray(image[..., None], jnp.float32), jnp.asarray(labels)


def _losses(config, steps):
  """Losses of `steps` Adam steps of the config's model and loss on one fixed batch."""
  # BatchNorm (the default's norm) with the statistics of this one device: no mesh axis here
  model = build_model(config, training=False).clone(bn_axis_name=None)
  loss_fn = loop.build_loss(config)
  x, y = _batch((2,) + tuple(config.patch_size))
  variables = jax.jit(lambda k: model.init(k, x[:1]))(jax.random.key(0, impl="rbg"))
  params = variables["params"]
  others = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    def loss(p):
      logits, _ = model.apply({**others, "params": p}, x, train=True, mutable=["batch_stats"])
      assert logits.dtype == jnp.float32  # the loss sees float32 logits
      return loss_fn(logits, y)
    value, grads = jax.value_and_grad(loss)(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # float32 params
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  opt_state, out = tx.init(params), []
  for _ in range(steps):
    params, opt_state, value = step(params, opt_state)
    out.append(float(value))
  return np.array(out)


def test_bfloat16_training_tracks_float32_on_the_smoke_unet():
  c = unet3d_synthetic.get_config("smoke")
  f32 = _losses(c, 6)
  c.dtype = "bfloat16"
  bf16 = _losses(c, 6)
  assert np.all(np.isfinite(bf16))
  assert bf16[-1] < bf16[0]  # it trains
  # bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2 %); over 6 steps
  # the losses (~2.0) stay within 2e-3 of float32's (measured: 1.1e-4 apart without normalisation).
  np.testing.assert_allclose(bf16, f32, atol=2e-3)
  assert not np.array_equal(bf16, f32)  # bf16 was really used


def _grads(config, shape):
  # training=True sets the rematerialised stages; BatchNorm statistics of one device
  model = build_model(config, training=True).clone(bn_axis_name=None)
  x, y = _batch(shape)
  variables = jax.jit(lambda k: model.init(k, x[:1]))(jax.random.key(0, impl="rbg"))
  loss_fn = loop.build_loss(config)

  def loss(p):
    logits, _ = model.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])
    return loss_fn(logits, y)
  return jax.jit(jax.grad(loss))(variables["params"])


@pytest.mark.parametrize("name,spatial_dims,policy", [
    ("unet", 3, "nothing_saveable"), ("unet", 2, "dots_saveable"), ("vnet", 3, "nothing_saveable")])
def test_remat_gives_the_same_gradients(name, spatial_dims, policy):
  if name == "unet":
    c = unet3d_synthetic.get_config("smoke")
    c.model.spatial_dims = spatial_dims
    c.model.norm = "batch"
    c.model.kernel_sizes = c.model.pool_sizes = None
    shape = (2,) + (8, 16, 16)[3 - spatial_dims:]
  else:
    c = vnet_synthetic.get_config("smoke")
    c.model.features, c.model.encoder_convs, c.model.decoder_convs = (4, 8), (1, 2), (1,)
    shape = (2, 8, 8, 8)
  plain = _grads(c, shape)
  c.remat, c.remat_policy = True, policy
  assert build_model(c).remat and build_model(c, training=False).remat is False
  remat = _grads(c, shape)
  assert jax.tree.structure(remat) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(remat), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("field,value,expected", [
    ("dtype", "float16", "config.dtype='float16': expected one of float32, bfloat16"),
    ("remat_policy", "all", "config.remat_policy='all': expected one of"),
])
def test_bad_speed_fields_are_one_line_errors(field, value, expected):
  c = unet3d_synthetic.get_config("smoke")
  c.remat = True
  c[field] = value
  with pytest.raises(InputError, match=expected.replace("(", r"\(")):
    build_model(c)


def test_models_without_a_compute_dtype_refuse_bfloat16():
  from experiments.configs import mlp_synthetic2d
  c = mlp_synthetic2d.get_config("smoke")
  c.dtype = "bfloat16"
  with pytest.raises(InputError, match="has no compute dtype"):
    build_model(c)


def test_remat_shrinks_what_the_forward_pass_saves():
  from benchmarks import train_speed
  c = unet3d_synthetic.get_config("smoke")
  x, y = _batch((2, 8, 16, 16))
  saved = {}
  for remat in (False, True):
    c.remat = remat
    model = build_model(c, training=True)
    variables = jax.eval_shape(lambda: model.clone(bn_axis_name=None).init(jax.random.key(0), x))
    saved[remat] = train_speed.saved_residual_bytes(c, model, loop.build_loss(c), variables,
                                                    {"image": x, "label": y})
  # only the stage inputs stay (measured without normalisation: 1.06 MB instead of 2.94 MB for batch 4)
  assert saved[True] < 0.5 * saved[False]
