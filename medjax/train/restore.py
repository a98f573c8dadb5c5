"""Loads a trained workdir: its config, the eval-mode model and the latest parameters.

A workdir written by `medjax.train.loop.train_and_evaluate` holds
`config.json` and `checkpoints/<step>/` (orbax). `load_run` rebuilds the model
exactly as evaluation does (`build_model(config, training=False)`) and
restores `params` (and `batch_stats`, when the model has BatchNorm) of the
latest checkpoint, without needing the optimizer that saved it.
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from medjax.errors import InputError
from medjax.train.model_factory import build_model


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs use (nested, e.g. `model.kernel_sizes`)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """`workdir/config.json` as a ConfigDict (lists as tuples); InputError naming the path."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise InputError(f"--workdir={workdir}: no such folder; expected a trained run's workdir")
  try:
    with open(path) as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise InputError(f"{path}: missing; expected the workdir of a run of experiments.main") from None
  except (OSError, ValueError) as e:
    raise InputError(f"{path}: not a readable config ({str(e).splitlines()[0]})") from None
  if not isinstance(raw, dict) or "model" not in raw:
    raise InputError(f"{path}: expected a run config with a 'model' field")
  return ml_collections.ConfigDict(_tuples(raw))


def load_checkpoint(workdir: str) -> tuple[int, dict]:
  """`(step, tree)` of the latest orbax checkpoint in `workdir/checkpoints`, as host arrays.

  The tree is restored without a target (a nested dict with the saved
  `params`, `batch_stats`, `opt_state`, `step`).
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory):
    raise InputError(f"{directory}: no checkpoints; expected a trained run's workdir")
  try:
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  except Exception as e:  # orbax raises several types for a bad folder
    raise InputError(f"{directory}: not an orbax checkpoint folder ({str(e).splitlines()[0]})") from None
  try:
    step = manager.latest_step()
    if step is None:
      raise InputError(f"{directory}: holds no finished checkpoint; train the run first")
    try:
      tree = manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # a truncated or foreign checkpoint
      raise InputError(f"{directory}/{step}: unreadable checkpoint "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  finally:
    manager.close()
  if not isinstance(tree, dict) or "params" not in tree:
    raise InputError(f"{directory}/{step}: checkpoint has no 'params'")
  return int(step), tree


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, nn.Module, dict]:
  """The trained run in `workdir`: `(config, eval model, variables)`.

  `variables` is `{"params": ...}` plus `"batch_stats"` when the run has
  BatchNorm statistics, ready for `model.apply(variables, x, train=False)`.

  Raises:
    InputError: the workdir, its `config.json` or its checkpoints are missing
      or unreadable (the message names the path).
  """
  config = load_config(workdir)
  model = build_model(config, training=False)
  _, tree = load_checkpoint(workdir)
  variables = {"params": jax.tree.map(np.asarray, tree["params"])}
  if tree.get("batch_stats"):
    variables["batch_stats"] = jax.tree.map(np.asarray, tree["batch_stats"])
  return config, model, variables
