"""Transfer tasks: fine-tuning and linear probing from pretrained weights.

Both are image classification (`ClassificationTask`: the same batches,
evaluation and outputs) started from `config.init_from`
(`medjax.train.warm_start`); they differ in what learns:

* `finetune` (Tajbakhsh et al. 2016, "Convolutional Neural Networks for
  Medical Image Analysis: Full Training or Fine Tuning?", IEEE TMI): the whole
  network, or all but `config.optimizer.frozen` stages, optionally with
  per-stage learning rates (`config.optimizer.lr_multipliers`).
* `linear_probe` (Azizpour et al. 2016, "Factors of Transferability for a
  Generic ConvNet Representation", TPAMI): only the classifier on top of the
  fixed "deep features": `config.optimizer.trainable` names the head, every
  other parameter is frozen and its BatchNorm runs in inference mode
  (`medjax.train.optim`).

The linear probe is trained in the loop (SGD/Adam on the cross-entropy of the
head, everything else frozen) rather than by the closed-form ridge probe of
`medjax.features.linear_probe_fit`: it then reads the same batches (with the
same flips), is checkpointed, resumed, evaluated and reported like every other
run, and the sweep compares it with fine-tuning and scratch training
field-for-field. The ridge probe stays available for offline feature studies.
"""
from __future__ import annotations

import ml_collections

from medjax.errors import InputError
from medjax.train import optim
from medjax.train.tasks.classification import ClassificationTask


def _require_init_from(config: ml_collections.ConfigDict, task: str) -> None:
  if not config.get("init_from", ""):
    raise InputError(f"config.init_from is empty: task {task!r} starts from pretrained weights "
                     "(a trained workdir or a weights file); train from scratch with "
                     "task='classification'")


class FinetuneTask(ClassificationTask):
  """Classification started from `config.init_from`, with optional frozen stages
  and per-stage learning rates."""

  def validate(self, config: ml_collections.ConfigDict) -> None:
    super().validate(config)
    _require_init_from(config, "finetune")


class LinearProbeTask(ClassificationTask):
  """Classification in which only the head (`config.optimizer.trainable`) learns,
  on the frozen features of the network loaded from `config.init_from`."""

  def validate(self, config: ml_collections.ConfigDict) -> None:
    super().validate(config)
    _require_init_from(config, "linear_probe")
    _, trainable = optim.frozen_prefixes(config.optimizer)
    if not trainable:
      raise InputError("config.optimizer.trainable is empty: task 'linear_probe' trains only "
                       "the classifier; name it, e.g. --config.optimizer.trainable='(\"head\",)'")
    if config.optimizer.get("lr_multipliers"):
      raise InputError("config.optimizer.lr_multipliers: a linear probe has one trainable part; "
                       "set its rate with optimizer.learning_rate")


__all__ = ["FinetuneTask", "LinearProbeTask"]
