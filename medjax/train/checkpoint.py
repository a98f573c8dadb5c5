"""Orbax checkpoints of the training state, saved every N steps and on SIGTERM.

Orbax writes each checkpoint to a temporary folder and renames it when it is
complete, so a run killed mid-save (even with `kill -9`) leaves the previous
checkpoint intact and a re-run resumes from it.
"""
from __future__ import annotations

import os
import signal
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from medjax.errors import InputError


class Checkpointer:
  """Saves and restores the host copy of a training-state pytree.

  Args:
    directory: `<workdir>/checkpoints`.
    every: save when `step % every == 0`.
    max_to_keep: number of recent checkpoints kept.
  """

  def __init__(self, directory: str, *, every: int, max_to_keep: int = 2):
    self.every = max(int(every), 1)
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    if self._manager.latest_step() == step:
      return False
    saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    return bool(saved)

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores into the structure (and dtypes/shapes) of `target`."""
    step = self._manager.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class StopRequest:
  """Turns SIGTERM (pre-emption) into a flag the training loop polls between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "StopRequest":
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    self.requested = True

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def restore_latest(directory: str) -> tuple[int, dict]:
  """`(step, tree)` of the latest checkpoint in `directory`, as host arrays.

  The tree is restored without a target (a nested dict with the saved
  `params`, `batch_stats`, `opt_state`, `step`), so no optimizer is needed.

  Raises:
    InputError: not an orbax folder, no finished checkpoint, an unreadable
      checkpoint, or one without `params` (the message names the path).
  """
  try:
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  except Exception as e:  # orbax raises several types for a bad folder
    raise InputError(f"{directory}: not an orbax checkpoint folder ({_first_line(e)})") from None
  try:
    step = manager.latest_step()
    if step is None:
      raise InputError(f"{directory}: holds no finished checkpoint; train the run first")
    try:
      tree = manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # a truncated or foreign checkpoint
      raise InputError(f"{directory}/{step}: unreadable checkpoint "
                       f"({type(e).__name__}: {_first_line(e)})") from None
  finally:
    manager.close()
  if not isinstance(tree, dict) or "params" not in tree:
    raise InputError(f"{directory}/{step}: checkpoint has no 'params'")
  return int(step), jax.tree.map(np.asarray, tree)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else ""
