"""The task interface: batches in, evaluation out, outputs written."""
from __future__ import annotations

import abc
from typing import Iterator, Optional, Sequence

import flax.linen as nn
import ml_collections
import numpy as np

from medjax.train.callbacks import Callback
from medjax.train.evaluate import Evaluation
from medjax.train.step import LossFn, Objective
from medjax.train.workdir import Workdir


class Task(abc.ABC):
  """What a run learns and how it is scored.

  The loop builds the model, loss and optimizer from the config, asks the
  task for its training batches, trains, and hands the trained model back to
  the task for `evaluate` and `write_outputs`.
  """

  #: metric prefixes printed in the one-line summary at the end of a run
  summary_metrics: Sequence[str] = ()
  #: what one evaluated item is called in that summary ("cases", "images")
  item_name: str = "cases"

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Raises `InputError` for a config field this task cannot take."""

  def input_shape(self, config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The shape of one input batch used to initialise the model."""
    return (1,) + tuple(config.patch_size) + (config.in_channels,)

  def objective(self, config: ml_collections.ConfigDict, label_loss: LossFn
                ) -> Optional[Objective]:
    """The task's own training loss of `(outputs, batch)` and model call, or None
    (the default): `label_loss` (the loop's `build_loss(config)`) of
    `batch["label"]`, with deep supervision."""
    return None

  def callbacks(self, config: ml_collections.ConfigDict, workdir: Workdir, *,
                start_step: int = 0) -> Sequence[Callback]:
    """Callbacks around the training steps (`medjax.train.callbacks`) of a run starting at
    `start_step` (> 0: resumed); none by default."""
    return ()

  @abc.abstractmethod
  def train_batches(self, config: ml_collections.ConfigDict, source: Sequence[dict], *,
                    start_step: int, process_index: int, process_count: int
                    ) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches `{"image", "label"}` for steps `start_step..num_steps-1`."""

  @abc.abstractmethod
  def evaluate(self, config: ml_collections.ConfigDict, model: nn.Module, variables: dict,
               source: Sequence[dict]) -> Evaluation:
    """Scores the trained model on `source` (the test split): numbers per case."""

  def write_outputs(self, config: ml_collections.ConfigDict, evaluation: Evaluation,
                    workdir: Workdir) -> Optional[list[str]]:
    """Writes the task's report files from `evaluation` (e.g. PNGs); returns their paths."""
    return None
