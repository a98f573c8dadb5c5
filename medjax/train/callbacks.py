"""Callbacks of the training loop: code a task adds around the steps without a second loop.

`medjax.train.loop.train` asks the task for its callbacks (`Task.callbacks`) and
calls, on every process:

* `on_train_start(start_step)` before the first step (after the state is
  initialised or restored);
* `after_step(step, state_fn, writer)` after every step: `state_fn()` returns the
  host `TrainState` (copied from the devices only when called), `writer` the
  run's `MetricWriter` (None on other processes than 0); returning a reason
  (a string) ends training after this step: the loop saves a checkpoint,
  records `stopped.json` (`Workdir.write_stopped`) and evaluates the run as if it
  had reached `num_steps`;
* `on_train_end(step, reason)` once training ends, with the last step done and
  why ("num_steps", a callback's reason, or "sigterm").

A callback that stops training must decide the same on every process (e.g. from
numbers all processes computed alike), or the processes would stop at
different steps.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from medjax.train.state import TrainState

StateFn = Callable[[], TrainState]


class Callback:
  """Does nothing; subclasses override what they need."""

  def on_train_start(self, start_step: int) -> None:
    """Before the first step of this process's run (`start_step` > 0 when resumed)."""

  def after_step(self, step: int, state_fn: StateFn, writer: Optional[Any]) -> Optional[str]:
    """After step `step` (1-based); a string ends training with that reason."""
    return None

  def on_train_end(self, step: int, reason: str) -> None:
    """After the last step (`step`), `reason` being "num_steps", "sigterm" or a callback's."""


__all__ = ["Callback", "StateFn"]
