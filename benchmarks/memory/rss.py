"""Resident set size of this process, read from Linux's `/proc/self` (bytes).

`current()` is the resident size now (`/proc/self/statm`); `lifetime_peak()` the
peak over the process's whole life (`getrusage`'s `ru_maxrss`, KiB on Linux);
`reset_peak()` / `peak()` bracket one call: writing "5" to `/proc/self/clear_refs`
resets the kernel's peak counter `VmHWM` to the current RSS (proc(5)).
"""
from __future__ import annotations

import os
import resource

_STATUS = "/proc/self/status"


def current() -> int:
  """The resident set size now."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def lifetime_peak() -> int:
  """The peak resident set size since the process started."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _status_bytes(field: str) -> int:
  """A `kB` field of `/proc/self/status` (e.g. "VmRSS", "VmHWM") in bytes."""
  with open(_STATUS) as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"{_STATUS} has no {field} field (Linux only)")


def reset_peak() -> int:
  """Resets the peak-RSS counter to the current RSS; returns the current RSS."""
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  return _status_bytes("VmRSS")


def peak() -> int:
  """The peak resident set size since the last `reset_peak`."""
  return _status_bytes("VmHWM")
