"""Checks a config before anything is written, and against a workdir's earlier run.

Task-specific fields are checked by the task (`medjax.train.tasks.Task.validate`).
"""
from __future__ import annotations

import json

import jax
import ml_collections

from medjax import layers, parallel, spatial
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
  roi = tuple(config.eval.get("roi_size") or ())
  if roi and (len(roi) != len(config.patch_size) or min(int(r) for r in roi) < 1):
    raise InputError(f"config.eval.roi_size={roi}: expected () (the patch) or "
                     f"{len(config.patch_size)} positive sizes")
  check_mesh(config)


def check_mesh(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """`config.mesh` against the devices (`parallel.mesh_shape`), and a spatial axis
  against the task, the patch and the model (`check_spatial`)."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  mesh = parallel.config_mesh(config)
  _, size = parallel.mesh_shape(mesh, num_devices)
  if size == 1:
    return
  if config.parallel != "shard_map":
    raise InputError(f"config.mesh.spatial={size}: a spatial axis needs "
                     f"config.parallel='shard_map', not {config.parallel!r}")
  if config.task != "segmentation" or len(config.patch_size) != 3:
    raise InputError(f"config.mesh.spatial={size}: the depth of 3D segmentation patches is "
                     f"split; config.task={config.task!r} with config.patch_size="
                     f"{tuple(config.patch_size)} takes config.mesh.spatial=1")
  from medjax.train.model_factory import build_model  # pylint: disable=g-import-not-at-top
  model = build_model(config, training=False)
  channels = int(config.get("in_channels", 1))
  check_spatial(model, tuple(config.patch_size), channels, size, num_devices)
  roi = tuple(config.eval.get("roi_size") or ())
  if roi and roi != tuple(config.patch_size):
    check_spatial(model, roi, channels, size, num_devices, field="config.eval.roi_size[0]")


def check_spatial(model, patch_size: tuple, in_channels: int, size: int,
                  num_devices: int | None = None, field: str = "config.patch_size[0]") -> None:
  """Refuses `size` depth slabs that `model` cannot run a `patch_size` patch on.

  The model is traced once on an abstract patch (`spatial.probe`); every
  convolution, pooling and up-convolution must cut into whole slabs (the
  depth after all poolings divisible by `size`), each halo no deeper than a
  slab. The error names `field` (the patch's or the window's depth) and lists the
  sizes that work (those dividing `num_devices`, if given).
  """
  if size == 1:
    return
  depth = int(patch_size[0])
  record = spatial.probe(lambda x: model.init(jax.random.key(0), x, train=False),
                         (1,) + tuple(patch_size) + (in_channels,))
  if spatial.splits(record, size):
    return
  valid = [n for n in spatial.valid_sizes(record, depth)
           if num_devices is None or num_devices % n == 0]
  coarsest = spatial.coarsest_depth(record)
  factor = depth // coarsest if coarsest else 1
  raise InputError(
      f"config.mesh.spatial={size}: the model cannot split the depth of a patch of "
      f"{field}={depth} into {size} slabs (its coarsest level is {coarsest} deep, "
      f"and every level needs whole slabs at least as deep as its convolutions' halo); expected "
      f"config.mesh.spatial in {{{', '.join(map(str, valid))}}}, or a patch depth that is at "
      f"least a multiple of {size * factor}")


def check_batch_split(config: ml_collections.ConfigDict, dp: parallel.DataParallel) -> None:
  """`config.global_batch_size` must split evenly over the mesh's 'data' groups."""
  if config.global_batch_size % dp.num_data == 0:
    return
  if dp.num_data == dp.num_devices:
    raise InputError(f"config.global_batch_size={config.global_batch_size}: expected a multiple "
                     f"of the number of devices ({dp.num_devices})")
  raise InputError(f"config.global_batch_size={config.global_batch_size}: expected a multiple "
                   f"of the data groups of config.mesh ({dp.num_data} = {dp.num_devices} devices "
                   f"/ spatial {dp.spatial_size})")


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
