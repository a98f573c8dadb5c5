"""glibc allocator settings for XLA's CPU buffers, applied by `import medjax` when
`MEDJAX_HOST_HEAP=1` is in the environment (off by default: see "Memory" below).

XLA's CPU runtime allocates a program's temporaries with `malloc` at every
execution and frees them when it ends: ~2 GB per training step of a 3D U-Net
with 16-128 features on 64^3 patches. glibc hands requests above its mmap
threshold their own `mmap` and unmaps them on `free`, and every thread but the
main one allocates from an arena of its own, whose heaps are 64 MiB at most:
a larger request made on one of XLA's worker threads is mmapped whatever the
thresholds say. So each step faults its whole working set in again, 4 KiB at
a time, zeroed by the kernel (measured in `benchmarks/RESULTS.md`, "Library
path").

`configure()` (run by `medjax/__init__.py`, before JAX starts its CPU client
and its threads) sets, with `MEDJAX_HOST_HEAP=1`, through glibc's `mallopt`:

* `M_ARENA_MAX` = 1: every thread allocates from the main heap, so no request
  is forced into its own mapping (threads created later never get an arena);
* `M_MMAP_MAX` = 0: no request is served by its own `mmap`;
* `M_TRIM_THRESHOLD` = -1 (never trim) and `M_TOP_PAD` = 64 MiB: memory freed
  at the end of a step stays in the heap for the next one instead of going
  back to the kernel.

Steps then reuse resident memory: no page faults and no kernel time per step
(the reference U-Net step: 0 faults and 0.006 s of kernel time against 556,000
faults and 1.2-1.6 s; `benchmarks/RESULTS.md`, "Library path"). The arithmetic
is untouched: results are bitwise the same.

Memory: the heap never shrinks, and on some programs it does not even hold at
their high-water mark: the MLPerf 3D U-Net step (64^3, full widths) grew the
process by ~2.2 GB per step (the same program without these settings: 4.1 GB
after every step), and the reference U-Net's process ended 5 steps at 8.5 GB
(2.9 GB in another run of 4 steps). Until that growth is understood the
settings are opt-in: `MEDJAX_HOST_HEAP=1` in the environment before `import
medjax` turns them on; `release()` (`malloc_trim`) hands the free part of the
heap back on demand.

Nothing is changed off Linux/glibc, or when the environment already tunes these `malloc` parameters (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_MAX_`,
`MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`, `MALLOC_MMAP_THRESHOLD_`, or
the matching `glibc.malloc.*` entries of `GLIBC_TUNABLES`): the user's
settings win. Threads that allocated before `import medjax` keep their
arenas (e.g. when JAX's CPU backend was started first); `status()` says so.
"""
from __future__ import annotations

import ctypes
import os
import sys
from typing import Mapping, Optional

SWITCH = "MEDJAX_HOST_HEAP"

# glibc's malloc.h parameter numbers for mallopt
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS = {"M_ARENA_MAX": (M_ARENA_MAX, 1), "M_MMAP_MAX": (M_MMAP_MAX, 0),
            "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, -1), "M_TOP_PAD": (M_TOP_PAD, 64 << 20)}
USER_MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                   "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")
USER_MALLOC_TUNABLES = ("glibc.malloc.arena_max", "glibc.malloc.mmap_max",
                        "glibc.malloc.trim_threshold", "glibc.malloc.top_pad",
                        "glibc.malloc.mmap_threshold")

_status: dict = {"applied": False, "reason": "configure() not called"}


def _libc() -> Optional[ctypes.CDLL]:
  """The process's C library when it is glibc with `mallopt`, else None."""
  try:
    name = os.confstr("CS_GNU_LIBC_VERSION").split()[0]
  except (AttributeError, ValueError, OSError, IndexError):
    return None
  if name != "glibc":
    return None
  try:
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
  except (OSError, AttributeError):
    return None
  return libc


def _backend_started() -> bool:
  """Whether JAX has already created a backend (its CPU client threads exist)."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None))


def skip_reason(environ: Mapping[str, str], libc_found: bool) -> Optional[str]:
  """Why `configure` leaves the allocator alone, or None when it applies the settings."""
  if environ.get(SWITCH, "0") != "1":
    return f"off by default ({SWITCH}=1 turns it on)"
  if not libc_found:
    return "not glibc"
  user = [k for k in USER_MALLOC_ENV if k in environ]
  tunables = environ.get("GLIBC_TUNABLES", "")
  user += [t for t in USER_MALLOC_TUNABLES if t in tunables]
  if user:
    return f"the environment sets malloc already ({', '.join(user)})"
  return None


def configure(environ: Optional[Mapping[str, str]] = None) -> dict:
  """Applies the settings of the module docstring once; returns `status()`."""
  global _status
  if _status.get("applied"):
    return status()
  environ = os.environ if environ is None else environ
  libc = _libc()
  reason = skip_reason(environ, libc is not None)
  if reason is not None:
    _status = {"applied": False, "reason": reason}
    return status()
  started = _backend_started()
  failed = [name for name, (param, value) in SETTINGS.items() if libc.mallopt(param, value) != 1]
  _status = {"applied": not failed, "reason": f"mallopt refused {failed}" if failed else "",
             "settings": {k: v for k, (_, v) in SETTINGS.items() if k not in failed},
             "backend_started_first": started}
  return status()


def status() -> dict:
  """`{"applied": bool, "reason": str, "settings": {name: value}, "backend_started_first":
  bool}`: what `configure` did in this process ("reason": why not, when it did not)."""
  return dict(_status)


def release() -> bool:
  """Returns the heap's free memory to the kernel (glibc `malloc_trim(0)`); True if any
  was returned. The next large program faults it in again."""
  libc = _libc()
  return bool(libc.malloc_trim(0)) if libc is not None else False
