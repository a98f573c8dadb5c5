"""Loads a trained run: its config, the eval-mode model and the latest parameters.

`load_run` rebuilds the model exactly as evaluation does
(`build_model(config, training=False)`) and restores `params` (and
`batch_stats`, when the model has BatchNorm) of the latest checkpoint, without
needing the optimizer that saved it. File names and the checkpoint format are
`medjax.train.workdir`'s business.
"""
from __future__ import annotations

import os
from typing import Union

import flax.linen as nn
import ml_collections

from medjax.train.model_factory import build_model
from medjax.train.workdir import Workdir


def load_variables(workdir: Workdir) -> dict:
  """`{"params": ...}` (+ `"batch_stats"`) of the latest checkpoint of `workdir`."""
  _, tree = workdir.latest_checkpoint()
  variables = {"params": tree["params"]}
  if tree.get("batch_stats"):
    variables["batch_stats"] = tree["batch_stats"]
  return variables


def load_run(workdir: Union[str, os.PathLike, Workdir]
             ) -> tuple[ml_collections.ConfigDict, nn.Module, dict]:
  """The trained run in `workdir`: `(config, eval model, variables)`.

  `variables` is `{"params": ...}` plus `"batch_stats"` when the run has
  BatchNorm statistics, ready for `model.apply(variables, x, train=False)`.

  Raises:
    InputError: the workdir, its `config.json` or its checkpoints are missing
      or unreadable (the message names the path).
  """
  workdir = Workdir.of(workdir)
  config = workdir.read_config()
  model = build_model(config, training=False)
  return config, model, load_variables(workdir)
