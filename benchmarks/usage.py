"""Per-step process counters that do not depend on how loaded the machine is.

Wall-clock time on a shared machine measures the other jobs as much as the
step. `Counters` reads `getrusage(RUSAGE_SELF)` around each timed call: user
and kernel (sys) CPU seconds of all the process's threads, and minor page
faults (first touches of freshly mapped memory: what an allocator that hands
memory back to the kernel after every step pays again at every step). `timed`
returns the wall time and those deltas; `summary` gives their medians; `rss_mb`
is the resident set size now (Linux `/proc/self/statm`), `peak_rss_mb` the
process's peak.
"""
from __future__ import annotations

import resource
import time
from typing import Any, Callable

import numpy as np


def _counters() -> np.ndarray:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return np.array([time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt], np.float64)


KEYS = ("wall_s", "user_s", "sys_s", "minor_faults")


def timed(fn: Callable[[], Any]) -> dict:
  """Runs `fn()` once: `{"wall_s", "user_s", "sys_s", "minor_faults"}` of that call."""
  before = _counters()
  fn()
  return dict(zip(KEYS, (_counters() - before).tolist()))


def summary(records: list[dict], prefix: str = "") -> dict:
  """Medians of `timed` records: `<prefix>user_s_median`, `<prefix>sys_s_median`,
  `<prefix>minor_faults_median` (wall times go through `timing.spread`)."""
  return {f"{prefix}{k}_median": float(np.median([r[k] for r in records])) for k in KEYS[1:]}


def rss_mb() -> float:
  """Resident set size of this process now, MiB (0 where /proc is missing)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20
  except OSError:
    return 0.0


def peak_rss_mb() -> float:
  """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
