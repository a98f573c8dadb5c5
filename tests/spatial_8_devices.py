"""Spatial partitioning on 8 host CPU devices, against one device (run by tests/test_spatial.py).

Run with `XLA_FLAGS=--xla_force_host_platform_device_count=8`. Prints one JSON line:
per case, the numbers the tests assert on.

* Training steps: one step of `make_train_step` under `DataParallel.spmd` on a mesh
  `data=2, spatial=4` and on one device, the same batch, SGD with learning rate 1 (so the
  parameter change is the gradient): the losses, the largest gradient difference and the
  batch-norm statistics. Cases: U-Net with instance norm through XLA's partitioner
  (`kernels="xla"`) and through the interpreted Pallas kernels on slabs (`"pallas"`),
  U-Net with batch norm and V-Net (5x5x5 halos, stride-2 down convolutions, PReLU
  residuals) on slabs with XLA's convolutions (`"auto"` on CPU).
* Inference: `sliding_window` with windows split over the mesh (`make_predict_fn(model,
  dp)`), and one window as large as the volume, against the single-device predictor.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medjax import losses, parallel
from medjax.inference import windows
from medjax.models import UNet, VNet
from medjax.train.state import TrainState
from medjax.train.step import make_predict_fn, make_train_step

MESH = {"data": 2, "spatial": 4}


def _batch(depth):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(4, depth, 8, 8, 1)).astype(np.float32)
  label = rng.integers(0, 3, size=(4, depth, 8, 8)).astype(np.int32)
  return {"image": image, "label": label}


def _step(model, kernels, batch, devices, mesh):
  dp = parallel.DataParallel("shard_map", devices=devices, mesh=mesh, kernels=kernels)
  variables = model.init(jax.random.key(0), jnp.asarray(batch["image"][:1]), train=False)
  state = TrainState.create(params=variables["params"],
                            batch_stats=variables.get("batch_stats", {}), tx=optax.sgd(1.0))
  loss_fn = losses.get_loss("dice_ce", kernels=kernels)
  step = dp.spmd(make_train_step(model, loss_fn, seed=0, partition=dp.partition))
  new, metrics = step(dp.replicate(jax.device_get(state)), dp.shard_batch(batch))
  new = dp.unreplicate(new)
  grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), state.params, new.params)
  return (grads, new.batch_stats, {k: float(np.asarray(v).reshape(-1)[0])
                                   for k, v in metrics.items()}, dp)


def step_case(model, kernels, depth):
  batch = _batch(depth)
  g1, s1, m1, _ = _step(model, kernels, batch, jax.devices()[:1], None)
  g8, s8, m8, dp = _step(model, kernels, batch, jax.devices(), MESH)
  diff = lambda a, b: max([float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
                           for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
                          or [0.0])
  return {"mesh": MESH, "partition": dp.partition.mode, "loss_one": m1["loss"],
          "loss_mesh": m8["loss"], "grad_norm_one": m1["grad_norm"],
          "max_grad": max(float(np.max(np.abs(g))) for g in jax.tree.leaves(g1)),
          "max_grad_error": diff(g8, g1), "max_batch_stats_error": diff(s8, s1)}


def window_case(kernels, volume_shape, roi, batch_size):
  model = UNet(features=(4, 8), num_classes=3, norm="instance", kernels=kernels)
  volume = np.random.default_rng(1).normal(size=(1,) + volume_shape + (1,)).astype(np.float32)
  variables = jax.device_get(model.init(jax.random.key(0), jnp.asarray(volume[:, :8, :8, :8])))
  one = make_predict_fn(model)
  dp = parallel.DataParallel("shard_map", mesh={"data": -1, "spatial": 4}, kernels=kernels)
  mesh = make_predict_fn(model, dp)
  mesh_variables = dp.replicate(variables)
  seen = []

  def on_mesh(x):
    y = mesh(mesh_variables, x)
    seen.append(len(y.sharding.device_set))
    return y

  run = lambda fn: windows.sliding_window(fn, volume, roi, overlap=0.5, batch_size=batch_size,
                                          output="both")
  labels1, probs1 = run(lambda x: one(variables, x))
  labels8, probs8 = run(on_mesh)
  return {"sharded_over": min(seen), "max_prob_error": float(np.max(np.abs(probs8 - probs1))),
          "labels_equal": bool(np.array_equal(labels8, labels1))}


def main():
  assert jax.device_count() == 8, "run with --xla_force_host_platform_device_count=8"
  unet = lambda norm, kernels: UNet(features=(4, 8), num_classes=3, norm=norm,
                                    bn_axis_name="data", kernels=kernels)
  out = {
      "unet_instance_xla": step_case(unet("instance", "xla"), "xla", 8),
      "unet_instance_pallas": step_case(unet("instance", "pallas"), "pallas", 8),
      "unet_batch_auto": step_case(unet("batch", "auto"), "auto", 8),
      "vnet_auto": step_case(VNet(num_classes=3, features=(4, 8), encoder_convs=(1, 2),
                                  decoder_convs=(1,), bn_axis_name="data", kernels="auto"),
                             "auto", 16),
      "window_auto": window_case("auto", (24, 12, 12), (8, 8, 8), 2),
      "window_xla": window_case("xla", (24, 12, 12), (8, 8, 8), 2),
      "whole_volume_auto": window_case("auto", (32, 8, 8), (32, 8, 8), 1),
  }
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
