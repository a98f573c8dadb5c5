"""Warm start (init_from, mapping, shape errors), frozen stages, lr multipliers, transfer tasks."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from experiments.configs import common
from medjax.errors import InputError
from medjax.train import loop, optim, warm_start
from medjax.train.model_factory import build_model
from medjax.train.workdir import Workdir


def tiny_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  """A two-stage ResNet with BatchNorm on 32x32 lesion slices, a few steps."""
  c = common.smoke(common.lesion_classification_2d())
  c.data_dir = data_dir
  c.model = ml_collections.ConfigDict(dict(
      name="resnet", stage_sizes=(1, 1), width=4, stem_kernel=3, stem_pool=False,
      norm="batch"))
  c.num_steps = 1
  c.checkpoint_every = 100  # only the final step is saved
  c.optimizer.warmup_steps = 0  # the first step must move the parameters
  c.update_from_flattened_dict(overrides)
  return c


def train(config, workdir):
  loop.prepare_workdir(config, workdir)
  return loop.train(config, workdir)["state"]


def flat(tree):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def initial_state(config):
  model = build_model(config, training=True)
  tx, _ = optim.make_optimizer(config.optimizer, config.num_steps)
  return loop.init_state(config, model, tx, (1, 32, 32, 1))


@pytest.fixture(scope="module")
def source_run(data_dir, tmp_path_factory):
  """A run trained 1 step (2 classes): `(workdir, params, batch_stats)`."""
  workdir = str(tmp_path_factory.mktemp("source"))
  state = train(tiny_config(data_dir), workdir)
  _, tree = Workdir(workdir).latest_checkpoint()
  assert np.array_equal(flat(tree["params"])["head/kernel"], flat(state.params)["head/kernel"])
  return workdir, flat(tree["params"]), flat(tree["batch_stats"])


THREE = dict(num_classes=3, class_names=("a", "b", "c"))


@pytest.fixture(scope="module")
def fresh_three_class(data_dir):
  """The fresh initial state of the same network with a 3-class head."""
  return initial_state(tiny_config(data_dir, **THREE))


@pytest.mark.e2e
def test_init_from_workdir_copies_params_and_keeps_a_new_head_fresh(data_dir, source_run,
                                                                    fresh_three_class):
  workdir, params, stats = source_run
  config = tiny_config(data_dir, init_from=workdir, init_exclude=("head",), **THREE)
  fresh = fresh_three_class.variables()
  warm = warm_start.apply(config, fresh)  # what loop.init_state does after the fresh init
  got, scratch = flat(warm["params"]), flat(fresh["params"])
  assert got["head/kernel"].shape == (8, 3)
  for key, value in got.items():
    if key.startswith("head/"):
      np.testing.assert_array_equal(value, scratch[key])  # fresh initialisation
    else:
      np.testing.assert_array_equal(value, params[key])
      assert not np.array_equal(value, scratch[key]), key
  assert set(flat(warm["batch_stats"])) == set(stats)
  for key, value in flat(warm["batch_stats"]).items():
    np.testing.assert_array_equal(value, stats[key])


@pytest.mark.e2e
def test_shape_mismatch_is_one_line_error_naming_the_path(data_dir, source_run,
                                                         fresh_three_class):
  config = tiny_config(data_dir, init_from=source_run[0], **THREE)
  with pytest.raises(InputError) as e:
    warm_start.apply(config, fresh_three_class.variables())
  message = str(e.value)
  assert "\n" not in message
  # head/bias comes first in path order: (2,) in the source, (3,) in the new model
  assert "params head/bias has shape (2,) in the source but (3,) in the model" in message


def test_npz_with_prefix_mapping_and_missing_source(tmp_path):
  variables = {"params": {"stem": {"w": np.ones((2, 3), np.float32)},
                          "head": {"b": np.zeros(2, np.float32)}}}
  path = warm_start.save_npz(str(tmp_path / "w.npz"), {"params": {"backbone": {
      "stem": {"w": np.full((2, 3), 7.0, np.float32)}}}})
  merged, report = warm_start.merge(variables, warm_start.load_source(path),
                                    mapping=("backbone/->",))
  np.testing.assert_array_equal(merged["params"]["stem"]["w"], np.full((2, 3), 7.0))
  np.testing.assert_array_equal(merged["params"]["head"]["b"], np.zeros(2))
  assert report == {"loaded": ["params/stem/w"], "fresh": ["params/head/b"]}
  with pytest.raises(InputError, match="no parameter of the model"):
    warm_start.merge(variables, warm_start.load_source(path))  # without the mapping
  with pytest.raises(InputError, match=r"init_mapping\[0\]"):
    warm_start.parse_mapping(("backbone/",))
  with pytest.raises(InputError, match="no such workdir or file"):
    warm_start.load_source(str(tmp_path / "missing.npz"))


@pytest.mark.e2e
def test_frozen_stages_keep_params_and_batch_norm_statistics(data_dir, source_run, tmp_path):
  workdir, params, stats = source_run
  config = tiny_config(data_dir, task="finetune", init_from=workdir, num_steps=3,
                       **{"optimizer.frozen": ("stem", "stage1"),
                          "optimizer.learning_rate": 0.05})
  state = train(config, str(tmp_path / "ft"))
  got, got_stats = flat(state.params), flat(state.batch_stats)
  assert int(state.step) == 3
  for key, value in got.items():
    if key.startswith(("stem/", "stage1/")):
      np.testing.assert_array_equal(value, params[key])
    else:
      assert not np.array_equal(value, params[key]), key
  for key, value in got_stats.items():
    if key.startswith(("stem/", "stage1/")):
      np.testing.assert_array_equal(value, stats[key])
    else:
      assert not np.array_equal(value, stats[key]), key


@pytest.mark.e2e
def test_linear_probe_trains_only_the_head(data_dir, source_run, tmp_path):
  workdir, params, stats = source_run
  config = tiny_config(data_dir, task="linear_probe", init_from=workdir, num_steps=2,
                       **{"optimizer.trainable": ("head",)})
  state = train(config, str(tmp_path / "probe"))
  for key, value in flat(state.params).items():
    if key.startswith("head/"):
      assert not np.array_equal(value, params[key]), key
    else:
      np.testing.assert_array_equal(value, params[key])
  for key, value in flat(state.batch_stats).items():
    np.testing.assert_array_equal(value, stats[key])


@pytest.mark.parametrize("task,overrides,expected", [
    ("linear_probe", {"init_from": "x"}, "config.optimizer.trainable is empty"),
    ("finetune", {}, "config.init_from is empty"),
])
def test_transfer_tasks_refuse_incomplete_configs(data_dir, tmp_path, task, overrides, expected):
  config = tiny_config(data_dir, task=task, **overrides)
  with pytest.raises(InputError, match=expected):
    loop.prepare_workdir(config, str(tmp_path / "w"))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_lr_multiplier_scales_the_update_and_frozen_gets_none(name):
  cfg = ml_collections.ConfigDict(dict(
      name=name, learning_rate=0.1, schedule="constant", momentum=0.0, nesterov=False,
      grad_clip_norm=0.0, frozen=("c",), lr_multipliers={"a": 0.1}))
  tx, _ = optim.make_optimizer(cfg, 10)
  params = {"a": jnp.ones(3), "b": jnp.ones(3), "c": jnp.ones(3)}
  grads = {"a": jnp.asarray([1.0, -2.0, 0.5]), "b": jnp.asarray([1.0, -2.0, 0.5]),
           "c": jnp.ones(3)}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["b"]).min()) > 0
  np.testing.assert_allclose(updates["a"], 0.1 * updates["b"], rtol=1e-6)
  np.testing.assert_array_equal(updates["c"], np.zeros(3))
  if name == "sgd":
    np.testing.assert_allclose(updates["b"], -0.1 * grads["b"], rtol=1e-6)


def test_frozen_gradients_do_not_count_in_clipping_and_typos_are_refused():
  cfg = ml_collections.ConfigDict(dict(
      name="sgd", learning_rate=1.0, schedule="constant", momentum=0.0, nesterov=False,
      grad_clip_norm=1.0, frozen=("c",)))
  tx, _ = optim.make_optimizer(cfg, 10)
  params = {"b": jnp.zeros(1), "c": jnp.zeros(1)}
  updates, _ = tx.update({"b": jnp.asarray([0.5]), "c": jnp.asarray([100.0])},
                         tx.init(params), params)
  np.testing.assert_allclose(updates["b"], [-0.5])  # not clipped by c's gradient
  cfg.frozen = ("stage9",)
  tx, _ = optim.make_optimizer(cfg, 10)
  with pytest.raises(InputError, match=r"optimizer.frozen: 'stage9' matches no parameter"):
    tx.init(params)


def test_torchvision_layout_file_goes_through_medjax_weights(tmp_path):
  """A state dict with torchvision's names (here a one-block, 8-wide ResNet) loads
  with its RGB first conv summed to one channel and without its classifier."""
  from medjax.models import ResNet

  def bn(name, c):
    return {f"{name}.weight": np.ones(c), f"{name}.bias": np.zeros(c),
            f"{name}.running_mean": np.full(c, 0.5), f"{name}.running_var": np.full(c, 2.0)}

  rgb = np.random.default_rng(0).normal(size=(8, 3, 7, 7)).astype(np.float32)
  state = {"conv1.weight": rgb, **bn("bn1", 8),
           "layer1.0.conv1.weight": np.zeros((8, 8, 3, 3)), **bn("layer1.0.bn1", 8),
           "layer1.0.conv2.weight": np.zeros((8, 8, 3, 3)), **bn("layer1.0.bn2", 8),
           "fc.weight": np.zeros((5, 8)), "fc.bias": np.zeros(5)}
  path = str(tmp_path / "tv.npz")
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in state.items()})
  model = ResNet(stage_sizes=(1,), width=8, num_classes=2, norm="batch")
  flat_vars = warm_start.load_source(path, model, in_channels=1, include_head=False)
  np.testing.assert_allclose(flat_vars["params/stem/unit/conv/kernel"][..., 0, :],
                             rgb.sum(1).transpose(1, 2, 0), rtol=1e-6)
  np.testing.assert_array_equal(flat_vars["batch_stats/stage1/block0/unit1/norm/var"],
                                np.full(8, 2.0))
  assert not any(k.startswith("params/head") for k in flat_vars)


@pytest.mark.e2e
def test_a_resumed_run_does_not_read_init_from_again(data_dir, source_run, tmp_path):
  """The workdir's own checkpoint wins: a resume works even after the source is gone."""
  import shutil
  source = str(tmp_path / "source_copy")
  shutil.copytree(source_run[0], source)
  workdir = str(tmp_path / "run")
  config = tiny_config(data_dir, init_from=source)
  first = flat(train(config, workdir).params)
  shutil.rmtree(source)
  with pytest.raises(InputError):  # a fresh run still needs its source
    initial_state(config)
  resumed = flat(train(tiny_config(data_dir, init_from=source, num_steps=2), workdir).params)
  assert any(not np.array_equal(resumed[k], first[k]) for k in first)  # step 2 ran
