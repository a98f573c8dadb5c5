"""Runs measured in epochs: the step counts of a config with an `epochs` section.

The loop counts steps. A config whose `epochs.max` is set (> 0) is measured in
epochs instead, as the MLPerf 3D U-Net is (mlcommons/training
`retired_benchmarks/unet3d/pytorch`): an epoch is one pass over the `N`
training cases in batches of `B` (the global batch size), the last incomplete
batch dropped, so `k = N // B` steps and `k B` samples (`samples_per_epoch` of
its `main.py`). `resolve(config)` fills in, when a run starts:

* `num_steps = max_epochs * k`;
* `optimizer.warmup_steps = epochs.warmup * k` and `optimizer.warmup_every = k`
  (the reference's per-epoch learning-rate warm-up, `optim.warmup_schedule`);
* `epochs.train_cases`, `epochs.steps_per_epoch`, `epochs.samples_per_epoch`,
  `epochs.max_epochs`.

Epoch counts given for another number of samples per epoch scale with it
(`epochs.reference_samples` > 0): MLPerf's README rule for other global batch
sizes, `CEILING(E * 168 / samples_per_epoch)` for the evaluation start, the
evaluation interval and the epoch limit (`scaled`). The warm-up is not scaled
(`lr_warmup_epochs`, a hyperparameter of the run script).
"""
from __future__ import annotations

import copy
import math

import ml_collections

from medjax.errors import InputError


def is_epoch_based(config: ml_collections.ConfigDict) -> bool:
  """Whether `config.epochs.max` is set."""
  return bool(config.get("epochs")) and int(config.epochs.get("max", 0)) > 0


def scaled(epochs: int, config: ml_collections.ConfigDict) -> int:
  """`ceil(epochs * reference_samples / samples_per_epoch)` (MLPerf's rule), or `epochs`
  when `epochs.reference_samples` is 0. Needs a resolved config."""
  reference = int(config.epochs.get("reference_samples", 0))
  if not reference:
    return int(epochs)
  return int(math.ceil(int(epochs) * reference / int(config.epochs.samples_per_epoch)))


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of an epoch-based config with its step counts filled in (module docstring);
  any other config is returned as it is. Reads the length of the train split (the
  dataset is prepared first if needed).

  Raises:
    InputError: fewer training cases than one global batch.
  """
  if not is_epoch_based(config):
    return config
  from medjax.train.config_data import load_split  # pylint: disable=import-outside-toplevel
  cases = len(load_split(config, "train"))
  batch = int(config.global_batch_size)
  steps = cases // batch
  if steps < 1:
    raise InputError(f"config.global_batch_size={batch}: the train split of {config.dataset} "
                     f"has {cases} cases; an epoch needs at least one full global batch")
  out = copy.deepcopy(config)
  locked = out.is_locked
  out.unlock()
  ep = out.epochs
  ep.train_cases, ep.steps_per_epoch, ep.samples_per_epoch = cases, steps, steps * batch
  ep.max_epochs = scaled(int(ep.max), out)
  out.num_steps = ep.max_epochs * steps
  warmup = int(ep.get("warmup", 0))
  out.optimizer.warmup_steps = warmup * steps
  out.optimizer.warmup_every = steps if warmup else 0
  if locked:
    out.lock()
  return out


__all__ = ["is_epoch_based", "resolve", "scaled"]
