"""Spatial partitioning (`medjax.spatial`): the depth of a patch split over devices.

On the suite's 4 CPU devices: halos, convolutions, losses and normalisation on depth
slabs equal the whole-patch computation; the model's limits and the config's bad
input give one line naming the field and the valid values. The 8-device training
step and inference checks run in a subprocess (`tests/spatial_8_devices.py`).
"""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments.configs import unet3d_synthetic
from medjax import layers, losses, parallel, spatial
from medjax.errors import InputError
from medjax.models import UNet, VNet
from medjax.train import config_check

SIZE = 4
PART = spatial.Partition(SIZE, "manual")


def _mesh():
  return Mesh(np.asarray(jax.devices()[:SIZE]), (spatial.AXIS,))


def _on_slabs(fn, split, out_split):
  return jax.jit(spatial.on_slabs(fn, PART, split, out_split, mesh=_mesh()))


def _normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_halo_exchange_takes_the_neighbours_rows_and_zeros_at_the_ends():
  x = jnp.arange(1, 9, dtype=jnp.float32).reshape(1, 8, 1, 1, 1)  # rows 1..8, 2 per slab
  halo = lambda x: spatial.halo_exchange(x, 1, 2, size=SIZE)
  out = _on_slabs(halo, (True,), True)(x)  # 5 rows per slab, slabs concatenated
  rows = np.asarray(out).reshape(SIZE, 5)
  np.testing.assert_array_equal(rows, [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6], [4, 5, 6, 7, 8],
                                       [6, 7, 8, 0, 0]])


GEOMETRIES = [  # window, stride, padding: the models' convolutions
    (3, 1, "SAME"),                      # U-Net
    (1, 1, "SAME"),                      # heads
    (5, 1, "SAME"),                      # V-Net
    (2, 2, "VALID"),                     # V-Net down
    (3, 2, ((1, 1), (1, 1), (1, 1))),    # MLPerf Unet3D down: 3x3x3, stride 2, padding 1
    (3, 2, "SAME"),
]


@pytest.mark.parametrize("window,stride,padding", GEOMETRIES)
def test_conv_on_slabs_equals_the_whole_convolution(window, stride, padding):
  x, w = _normal((2, 16, 4, 4, 3)), _normal((window,) * 3 + (3, 5), 1)
  r = _normal((2, 16 // stride, 4 // stride, 4 // stride, 5), 2)  # weights of the outputs

  def value_grads(w, x, r):
    loss = lambda w, x: spatial.voxel_sum(r * layers.conv(
        x, w, strides=(stride,) * 3, padding=padding, activation="relu", kernels="xla"))
    value, (gw, gx) = jax.value_and_grad(loss, argnums=(0, 1))(w, x)
    return value, spatial.slab_mean(gw), gx

  want = jax.jit(value_grads)(w, x, r)
  got = _on_slabs(value_grads, (False, True, True), (False, False, True))(w, x, r)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
  # a slab-split input's gradient counts the loss once per slab (see spatial.slab_mean)
  np.testing.assert_allclose(got[2] / SIZE, want[2], rtol=1e-4, atol=1e-5)


def test_pallas_conv_on_slabs_equals_the_whole_convolution():
  """The interpreted Triton kernel, fed the haloed slab with explicit padding."""
  x, w, b = _normal((1, 8, 4, 4, 2)), _normal((3, 3, 3, 2, 4), 1), _normal((4,), 2)
  conv = lambda x: layers.conv(x, w, b, strides=(1, 1, 1), padding="SAME", activation="relu",
                               kernels="pallas")
  np.testing.assert_allclose(_on_slabs(conv, (True,), True)(x), jax.jit(conv)(x),
                             rtol=1e-5, atol=1e-5)


LOSSES = [("ce", {}), ("ce", {"ignore_index": 2}), ("dice", {}), ("dice", {"batch": True}),
          ("dice", {"squared": True, "include_background": False}), ("dice_ce", {}),
          ("gdl", {}), ("tversky", {"alpha": 0.3, "beta": 0.7}), ("focal", {}), ("wce", {}),
          ("gwdl", {}), ("gwdl", {"weighting": "gdl"})]


@pytest.mark.parametrize("name,options", LOSSES)
def test_losses_on_slabs_equal_the_whole_patch(name, options):
  logits = _normal((2, 8, 4, 4, 3))
  labels = jnp.asarray(np.random.default_rng(3).integers(0, 3, (2, 8, 4, 4)), jnp.int32)
  loss = losses.get_loss(name, **options)
  np.testing.assert_allclose(_on_slabs(loss, (True, True), False)(logits, labels),
                             jax.jit(loss)(logits, labels), rtol=1e-5)


def test_pallas_dice_statistics_are_summed_over_the_slabs():
  logits = _normal((1, 8, 4, 4, 3))
  labels = jnp.asarray(np.random.default_rng(3).integers(0, 3, (1, 8, 4, 4)), jnp.int32)
  stats = lambda x, y: losses.dice_statistics(x, y, kernels="pallas")
  for got, want in zip(_on_slabs(stats, (True, True), False)(logits, labels),
                       jax.jit(stats)(logits, labels)):
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_normalisation_statistics_are_those_of_the_whole_patch(norm):
  x = _normal((2, 8, 4, 4, 3)) * 3.0 + 1.0

  class Norm(nn.Module):
    @nn.compact
    def __call__(self, x):
      layer = layers.normalization(norm, None)
      return layer(x, use_running_average=False) if norm == "batch" else layer(x)

  model = Norm()
  variables = model.init(jax.random.key(0), x)
  apply = lambda v, x: model.apply(v, x, mutable=["batch_stats"])
  want, want_stats = jax.jit(apply)(variables, x)
  got, got_stats = _on_slabs(apply, (False, True), (True, False))(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def _sizes(model, shape):
  record = spatial.probe(lambda x: model.init(jax.random.key(0), x, train=False), shape)
  return spatial.valid_sizes(record, shape[1])


def test_the_probe_finds_the_depths_a_model_can_split():
  # 2 poolings: 8 rows -> 2 at the bottom; 3x3x3 halos need 1 row per slab
  assert _sizes(UNet(features=(4, 8, 16)), (1, 8, 8, 8, 1)) == [1, 2]
  # depth never pooled (nnU-Net's in-plane first level): any divisor of the depth
  assert _sizes(UNet(features=(4, 8), pool_sizes=((1, 2, 2),)), (1, 6, 8, 8, 1)) == [1, 2, 3, 6]
  # V-Net's 5x5x5 halos need 2 rows per slab: 8 bottom rows split at most 4 ways
  assert _sizes(VNet(features=(4, 8), encoder_convs=(1, 1), decoder_convs=(1,)),
                (1, 16, 8, 8, 1)) == [1, 2, 4]
  # "valid" convolutions shrink the volume: no split
  assert _sizes(UNet(features=(4, 8), padding="valid"), (1, 20, 20, 20, 1)) == [1]


def test_a_spatial_axis_that_does_not_divide_the_coarsest_level_names_the_valid_values():
  with pytest.raises(InputError) as e:
    config_check.check_spatial(UNet(features=(4, 8, 16)), (8, 8, 8), 1, 4, num_devices=8)
  message = str(e.value)
  assert "\n" not in message
  assert "config.mesh.spatial=4" in message and "config.patch_size[0]=8" in message
  assert "coarsest level is 2 deep" in message and "{1, 2}" in message


@pytest.mark.parametrize("mesh,devices,expected", [
    (None, 8, (8, 1)), ({"data": -1, "spatial": 4}, 8, (2, 4)),
    ({"data": 2, "spatial": 4}, 8, (2, 4)), ({"spatial": 8}, 8, (1, 8))])
def test_mesh_shape(mesh, devices, expected):
  assert parallel.mesh_shape(mesh, devices) == expected


@pytest.mark.parametrize("mesh,words", [
    ({"data": -1, "spatial": 3}, ["config.mesh.spatial=3 does not divide the 8 devices",
                                  "1, 2, 4, 8"]),
    ({"data": 3, "spatial": 2}, ["asks for 6 devices but there are 8", "data=-1"]),
    ({"spatial": 0}, ["config.mesh.spatial=0", "positive integer"]),
    ({"model": 2}, ["unknown axis 'model'"]),
])
def test_mesh_shape_errors_name_the_field_and_the_valid_values(mesh, words):
  with pytest.raises(InputError) as e:
    parallel.mesh_shape(mesh, 8)
  assert "\n" not in str(e.value)
  for w in words:
    assert w in str(e.value)


def _smoke_config(**mesh):
  config = unet3d_synthetic.get_config("smoke")  # patch (8, 16, 16), depth never pooled
  config.mesh.update(mesh)
  return config


@pytest.mark.parametrize("change,words", [
    (dict(spatial=3), ["config.mesh.spatial=3 does not divide the 4 devices"]),
    (dict(spatial=2, parallel="pmap"), ["config.parallel='shard_map'"]),
    (dict(spatial=4, patch_size=(6, 16, 16)),
     ["config.mesh.spatial=4", "config.patch_size[0]=6", "{1, 2}"]),
    (dict(spatial=2, patch_size=(16, 16)), ["config.task='segmentation'", "spatial=1"]),
])
def test_config_validation_refuses_an_impossible_spatial_axis(change, words):
  config = _smoke_config(spatial=change.pop("spatial"))
  for key, value in change.items():
    config[key] = value
  if len(config.patch_size) == 2:
    config.model.spatial_dims = 2
    config.model.kernel_sizes = config.model.pool_sizes = None
  with pytest.raises(InputError) as e:
    config_check.validate(config)
  for w in words:
    assert w in str(e.value)


def test_an_evaluation_window_the_mesh_cannot_split_is_refused():
  config = _smoke_config(spatial=4)
  config.eval.roi_size = (6, 32, 32)
  with pytest.raises(InputError, match=r"config.eval.roi_size\[0\]=6 into 4 slabs.*\{1, 2\}"):
    config_check.validate(config)
  config.eval.roi_size = (16, 32)
  with pytest.raises(InputError, match=r"config.eval.roi_size=\(16, 32\): expected \(\)"):
    config_check.validate(config)


def test_a_batch_that_does_not_split_over_the_data_groups_is_refused():
  config = _smoke_config(spatial=2)
  config.global_batch_size = 3
  dp = parallel.DataParallel.from_config(config)
  assert (dp.num_data, dp.spatial_size, dp.partition.mode) == (2, 2, "manual")
  with pytest.raises(InputError, match=r"multiple of the data groups of config.mesh \(2 = 4 "
                                       r"devices / spatial 2\)"):
    config_check.check_batch_split(config, dp)


def test_kernels_xla_partitions_through_annotations():
  config = _smoke_config(spatial=4)
  config.kernels = "xla"
  assert parallel.DataParallel.from_config(config).partition == spatial.Partition(4, "auto")


@pytest.fixture(scope="module")
def eight_devices():
  """The checks of `tests/spatial_8_devices.py`, run once on 8 host CPU devices."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  script = os.path.join(os.path.dirname(__file__), "spatial_8_devices.py")
  proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                        timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


STEP_CASES = ["unet_instance_xla", "unet_instance_pallas", "unet_batch_auto", "vnet_auto"]


@pytest.mark.e2e
@pytest.mark.parametrize("case", STEP_CASES)
def test_a_training_step_on_data_2_spatial_4_equals_the_single_device_step(eight_devices, case):
  r = eight_devices[case]
  assert r["mesh"] == {"data": 2, "spatial": 4} and r["partition"] in ("auto", "manual")
  np.testing.assert_allclose(r["loss_mesh"], r["loss_one"], rtol=1e-5)
  assert r["grad_norm_one"] > 0
  assert r["max_grad_error"] <= 1e-4 * r["max_grad"], r  # every gradient entry
  assert r["max_batch_stats_error"] <= 1e-5


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["window_auto", "window_xla", "whole_volume_auto"])
def test_inference_with_a_spatial_axis_equals_the_single_device_result(eight_devices, case):
  r = eight_devices[case]
  assert r["sharded_over"] >= 4  # the windows were split over the mesh
  assert r["max_prob_error"] <= 1e-5
  assert r["labels_equal"]


@pytest.mark.e2e
def test_a_smoke_run_split_over_depth_trains_and_evaluates_like_data_parallel(tmp_path):
  """`--config.mesh.spatial=2` on 4 devices (2 data groups of 2 slabs) against the
  data-parallel run: the same losses and test Dice, through the loop and the evaluation."""
  from medjax.train import loop  # pylint: disable=g-import-not-at-top
  runs = {}
  for size in (1, 2):
    config = _smoke_config(spatial=size)
    config.data_dir = str(tmp_path / "data")
    config.num_steps = 2
    config.loss.batch = False  # batch Dice sums over a device's (a data group's) share
    config.eval.report_cases = 0
    config.eval.surface_metrics = False
    config.eval.postprocess = False
    results = loop.train_and_evaluate(config, str(tmp_path / f"spatial{size}"))
    with open(tmp_path / f"spatial{size}" / "metrics.jsonl") as f:
      runs[size] = ([json.loads(line)["loss"] for line in f], results)
  (loss1, eval1), (loss2, eval2) = runs[1], runs[2]
  assert len(loss1) == len(loss2) == 2
  np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
  np.testing.assert_allclose(eval2["dice/organ"], eval1["dice/organ"], atol=1e-4)
