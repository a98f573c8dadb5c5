"""Checks a config before anything is written, and against a workdir's earlier run.

Task-specific fields are checked by the task (`medjax.train.tasks.Task.validate`).
"""
from __future__ import annotations

import json

import ml_collections

from medjax import layers, parallel
from medjax.errors import InputError
from medjax.train import config_data
from medjax.train.workdir import Workdir

# Fields that fix the shapes of the state: a workdir holding a run that
# differs in any of these cannot be resumed with the new config.
# A folder dataset's run also keeps its folder and cross-validation fold.
STATE_FIELDS = ("task", "dataset", "num_classes", "label_map", "model", "optimizer.name", "seed",
                "dataset_kwargs.manual_dir", "dataset_kwargs.fold", "dataset_kwargs.num_folds")


def _get(config_dict: dict, dotted: str):
  value = config_dict
  for part in dotted.split("."):
    if not isinstance(value, dict) or part not in value:
      return None
    value = value[part]
  return value


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises InputError naming the first impossible field."""
  parallel.check_parallel(config.parallel)
  if config.get("label_map") and max(config.label_map) >= config.num_classes:
    raise InputError(f"config.label_map={tuple(config.label_map)} maps to a class id >= "
                     f"config.num_classes={config.num_classes}")
  try:
    layers.check_kernels(config.kernels)
  except ValueError as e:
    raise InputError(f"config.kernels: {e}") from None
  positive = ["num_steps", "global_batch_size", "log_every", "checkpoint_every", "num_classes"]
  for key in positive:
    if int(config[key]) <= 0:
      raise InputError(f"config.{key}={config[key]}: expected a positive integer")
  if not 0.0 <= float(config.foreground_fraction) <= 1.0:
    raise InputError(f"config.foreground_fraction={config.foreground_fraction}: expected a value in [0, 1]")
  if not 0.0 <= float(config.eval.overlap) < 1.0:
    raise InputError(f"config.eval.overlap={config.eval.overlap}: expected a value in [0, 1)")
  config_data.input_normalizer(config)  # an unknown config.normalization, or a clash
  if config.get("cached_cases") is not None and int(config.cached_cases) < 1:
    raise InputError(f"config.cached_cases={config.cached_cases}: expected at least 1 decoded case")
  if len(config.class_names) != config.num_classes:
    raise InputError(f"config.class_names has {len(config.class_names)} names but "
                     f"config.num_classes={config.num_classes}")


def check_workdir(config: ml_collections.ConfigDict, workdir: Workdir) -> None:
  """Refuses a workdir whose earlier run cannot be resumed with `config`."""
  if not workdir.has_config():
    return
  try:
    old = workdir.read_config_json()
  except InputError as e:
    raise InputError(f"{e}; use a new --workdir") from None
  new = json.loads(config.to_json())
  for field in STATE_FIELDS:
    if _get(old, field) != _get(new, field):
      raise InputError(
          f"--workdir={workdir.path} holds a run with {field}={_get(old, field)!r}, but the config has "
          f"{field}={_get(new, field)!r}; use a new --workdir or the same config")
