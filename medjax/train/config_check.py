"""Checks a config before anything is written, and against a workdir's earlier run."""
from __future__ import annotations

import json
import os

import ml_collections

from medjax import layers, parallel
from medjax.errors import InputError

# Fields that fix the shapes of the state: a workdir holding a run that
# differs in any of these cannot be resumed with the new config.
STATE_FIELDS = ("task", "dataset", "num_classes", "label_map", "model", "optimizer.name", "seed")


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
  if config.task not in ("segmentation", "classification", "cascade"):
    raise InputError(f"config.task={config.task!r}: expected 'segmentation', 'classification' "
                     "or 'cascade'")
  if config.get("label_map") and max(config.label_map) >= config.num_classes:
    raise InputError(f"config.label_map={tuple(config.label_map)} maps to a class id >= "
                     f"config.num_classes={config.num_classes}")
  try:
    layers.check_implementation(config.kernels)
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
  if len(config.class_names) != config.num_classes:
    raise InputError(f"config.class_names has {len(config.class_names)} names but "
                     f"config.num_classes={config.num_classes}")
  if config.task == "segmentation" and len(config.patch_size) != config.model.get("spatial_dims", 3):
    raise InputError(f"config.patch_size={tuple(config.patch_size)}: expected "
                     f"{config.model.get('spatial_dims', 3)} sizes (model.spatial_dims)")


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a workdir whose earlier run cannot be resumed with `config`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: not a readable config ({e}); use a new --workdir") from None
  new = json.loads(config.to_json())
  for field in STATE_FIELDS:
    if _get(old, field) != _get(new, field):
      raise InputError(
          f"--workdir={workdir} holds a run with {field}={_get(old, field)!r}, but the config has "
          f"{field}={_get(new, field)!r}; use a new --workdir or the same config")
