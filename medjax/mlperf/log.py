"""MLPerf's `mllog` events of one run, written to a file of the workdir.

`mlperf_logging.mllog.MLLogger` (the `mlperf-logging` package, the one MLPerf
results are checked with) on a `logging.Logger` of this run alone, so that
several runs in one process (tests) never share a file; lines are
`:::MLLOG {json}` as the compliance checker parses them. Only process 0 writes.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from medjax.errors import InputError

PACKAGE_HINT = ("pip install mlperf-logging==4.1.68 (or the medjax[mlperf] extra)")


def constants():
  """`mlperf_logging.mllog.constants`, or InputError saying how to install the package."""
  try:
    from mlperf_logging.mllog import constants as c  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError(f"the MLPerf run logs with the mlperf-logging package: {PACKAGE_HINT}") \
        from None
  return c


class MLLog:
  """`start` / `end` / `event` of MLPerf keys into `path` (appended), or nothing when
  `enabled` is False (processes other than 0)."""

  def __init__(self, path: str, *, enabled: bool = True):
    constants()  # the one-line error when the package is missing
    from mlperf_logging.mllog import mllog  # pylint: disable=import-outside-toplevel
    self.path, self.enabled = path, enabled
    self._logger: Optional[logging.Logger] = None
    self._handler: Optional[logging.Handler] = None
    self._mllogger = None
    if enabled:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self._logger = logging.getLogger(f"medjax.mlperf.{id(self)}")
      self._logger.propagate = False
      self._logger.setLevel(logging.INFO)
      self._handler = logging.FileHandler(path, mode="a")
      self._handler.setFormatter(logging.Formatter("%(message)s"))
      self._logger.addHandler(self._handler)
      self._mllogger = mllog.MLLogger(self._logger, default_stack_offset=2)

  def _log(self, kind: str, key: str, value: Any = None, metadata: Optional[dict] = None):
    if self._mllogger is not None:
      getattr(self._mllogger, kind)(key=key, value=value, metadata=metadata)
      self._handler.flush()

  def start(self, key: str, value: Any = None, metadata: Optional[dict] = None) -> None:
    self._log("start", key, value, metadata)

  def end(self, key: str, value: Any = None, metadata: Optional[dict] = None) -> None:
    self._log("end", key, value, metadata)

  def event(self, key: str, value: Any = None, metadata: Optional[dict] = None) -> None:
    self._log("event", key, value, metadata)

  def close(self) -> None:
    if self._logger is not None:
      self._logger.removeHandler(self._handler)
      self._handler.close()
      self._logger = self._mllogger = None


__all__ = ["MLLog", "constants"]
