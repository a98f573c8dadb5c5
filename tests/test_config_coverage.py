"""What the experiment configs promise, derived from what exists so nothing new escapes:
every option of the builder a config reads is a `dataset_kwargs` field (settable from
the command line), and every config file has a smoke test."""
import dataclasses
import importlib
import os
import re
import sys

import pytest
import tensorflow_datasets as tfds
from absl import flags
from ml_collections import config_flags

from medjax.data.builders import datasets, folder_datasets  # noqa: F401  (registers the builders)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "experiments", "configs")
NOT_CONFIGS = ("__init__", "common")
CONFIG_NAMES = sorted(name[:-3] for name in os.listdir(CONFIG_DIR)
                      if name.endswith(".py") and name[:-3] not in NOT_CONFIGS)


def _builder_options(dataset: str) -> set:
  """The fields of the config dataclass of `dataset`'s builder, less TFDS's own."""
  cls = tfds.builder_cls(dataset.partition("/")[0])
  config = cls.BUILDER_CONFIGS[0]
  own = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  options = {f.name for f in dataclasses.fields(config)} - own
  if dataset.partition("/")[0] in folder_datasets.BUILDERS:
    options |= set(folder_datasets.LOAD_TIME_KWARGS)
  return options


def _default_config(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  return module.get_config()


def test_the_configs_are_found():
  assert {"unet3d_folder", "transfer_patches2d", "convnet_medmnist"} <= set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_builder_option_is_a_dataset_kwargs_field(name):
  config = _default_config(name)
  missing = _builder_options(config.dataset) - set(config.dataset_kwargs)
  assert not missing, f"{name}: dataset_kwargs lacks {sorted(missing)} of {config.dataset}"


@pytest.mark.parametrize("flag,field,value", [
    ("--config.dataset_kwargs.max_patch_voxels=32768", "max_patch_voxels", 32768),
    ("--config.dataset_kwargs.patch_size=(16,32,32)", "patch_size", (16, 32, 32)),
    ("--config.dataset_kwargs.ndim=2", "ndim", 2),
    ("--config.dataset_kwargs.skip_bad_cases=True", "skip_bad_cases", True),
])
def test_folder_options_are_accepted_from_flags(flag, field, value, monkeypatch):
  argv = ["main", f"--config={os.path.join(CONFIG_DIR, 'unet3d_folder.py')}", flag]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags finds the overrides in sys.argv
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
  flag_values(argv)
  assert flag_values.config.dataset_kwargs[field] == value


def test_options_left_unset_are_the_named_datasets(tmp_path):
  """Unset options (None) are not passed: the named dataset is prepared under its own name."""
  from experiments.configs import unet3d_synthetic  # pylint: disable=import-outside-toplevel
  from medjax.train import config_data  # pylint: disable=import-outside-toplevel
  config = unet3d_synthetic.get_config()
  assert config.dataset_kwargs.shape is None
  assert config_data.dataset_kwargs(config) == {}
  smoke = unet3d_synthetic.get_config("smoke")
  assert config_data.dataset_kwargs(smoke) == {
      "shape": (16, 32, 32), "split_sizes": {"train": 3, "validation": 1, "test": 2}}
  default = datasets.get_builder("synthetic_organs/3d", str(tmp_path), shape=(64, 96, 96))
  assert default.builder_config.name == "3d"  # spelling out the named config's value
  train_only = datasets.get_builder("synthetic_organs/3d", str(tmp_path),
                                    split_sizes={"train": 5})
  assert dict(train_only.builder_config.split_sizes) == {"train": 5, "validation": 4, "test": 8}


SMOKE_USE = (r"\b{name}\.get_config\(\s*[\"'][^\"']*smoke",  # name.get_config("...smoke")
             r"\({name},\s*[\"'][^\"']*smoke",  # (name, "...smoke", ...) in a parametrize list
             r"configs/{name}\.py:[^\"'\s]*smoke")  # --config=.../name.py:smoke
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_every_config_has_a_smoke_test(name):
  """Some test module trains the config's `smoke` variant (by one of the `SMOKE_USE` forms)."""
  patterns = [re.compile(p.format(name=name)) for p in SMOKE_USE]
  users = []
  for test_file in sorted(os.listdir(TESTS)):
    if not (test_file.startswith("test_") and test_file.endswith(".py")):
      continue
    with open(os.path.join(TESTS, test_file)) as f:
      text = f.read()
    if test_file != os.path.basename(__file__) and any(p.search(text) for p in patterns):
      users.append(test_file)
  assert users, f"experiments/configs/{name}.py: no test trains its smoke variant"
