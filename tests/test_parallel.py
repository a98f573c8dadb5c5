"""The SPMD step under shard_map and pmap: same numbers, synchronised BatchNorm."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from medjax import parallel
from medjax.models import UNet
from medjax.train.state import TrainState
from medjax.train.step import make_train_step

from helpers import init


def _ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 8, 8, 8, 1)).astype(np.float32)
  y = rng.integers(0, 3, size=(8, 8, 8, 8)).astype(np.int32)
  return x, y


def _run(mode, *, norm=None, dropout=0.0, steps=3, devices=None, x=None, tx=None):
  dp = parallel.DataParallel(mode, devices=devices)
  model = UNet(spatial_dims=3, features=(4, 8), num_classes=3, norm=norm,
               bn_axis_name="data", dropout=dropout)
  xd, y = _data()
  x = xd if x is None else x
  variables = init(model, jnp.asarray(x[:1]), seed=0, train=False)
  state = TrainState.create(params=variables["params"],
                            batch_stats=variables.get("batch_stats", {}), tx=tx or optax.adam(1e-2))
  step = dp.spmd(make_train_step(model, _ce, seed=0), donate_argnums=(0,))
  dstate = dp.replicate(jax.device_get(state))
  metrics_seen = []
  for i in range(steps):
    batch = {"image": np.roll(x, i, axis=0), "label": np.roll(y, i, axis=0)}
    dstate, metrics = step(dstate, dp.shard_batch(batch))
    metrics_seen.append({k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()})
  return dp.unreplicate(dstate), metrics_seen


def _assert_trees_close(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_shard_map_and_pmap_give_the_same_parameters_after_3_steps():
  """4 devices, batch norm synchronised over 'data', dropout keyed per device."""
  assert jax.device_count() == 4
  s1, m1 = _run("shard_map", norm="batch", dropout=0.1)
  s2, m2 = _run("pmap", norm="batch", dropout=0.1)
  np.testing.assert_allclose([m["loss"] for m in m1], [m["loss"] for m in m2], rtol=1e-5)
  assert m1[0]["loss"] != m1[2]["loss"]
  assert int(s1.step) == int(s2.step) == 3
  _assert_trees_close(s1.params, s2.params)
  _assert_trees_close(s1.batch_stats, s2.batch_stats)


def test_four_devices_equal_one_device_on_the_global_batch():
  """Averaging per-device gradients (and BatchNorm statistics) over 'data'
  equals training on the whole global batch on one device. (SGD: Adam's
  normalised step would magnify float rounding in near-zero gradients.)"""
  s4, m4 = _run("shard_map", norm="batch", steps=2, tx=optax.sgd(0.1))
  s1, m1 = _run("shard_map", norm="batch", steps=2, devices=jax.devices()[:1], tx=optax.sgd(0.1))
  np.testing.assert_allclose([m["loss"] for m in m4], [m["loss"] for m in m1], rtol=1e-5)
  _assert_trees_close(s4.params, s1.params)


def test_non_finite_loss_leaves_the_state_unchanged():
  x, _ = _data()
  x = x.copy()
  x[0, 0, 0, 0, 0] = np.nan
  state, metrics = _run("shard_map", steps=1, x=x)
  assert metrics[0]["finite"] == 0.0
  assert int(state.step) == 0
  clean, _ = _run("shard_map", steps=0)
  _assert_trees_close(state.params, clean.params)
