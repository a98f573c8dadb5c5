"""Transparent huge pages for XLA's CPU buffers, set before a launcher starts.

XLA's CPU runtime allocates a training step's temporaries afresh at every
execution, and glibc serves allocations that large with their own `mmap`,
returned to the kernel on `free`: every step page-faults its whole working set
again, 4 KiB at a time (the PERF.md 3D U-Net: 0.56 M faults and ~0.8 s of
kernel time in a 1.7 s step on a 2-core machine). With glibc's
`glibc.malloc.hugetlb=1` tunable (glibc >= 2.35) those mappings are
`madvise(MADV_HUGEPAGE)`d: 2 MiB pages, ~3,300 faults per step, and fewer TLB
misses in the strided slices of the convolutions; the same step takes 1.18 s
(`benchmarks/RESULTS.md`). Memory is still returned to the system after each
step, so peak and idle RSS do not change.

With `MEDJAX_HOST_HEAP=1` (`medjax.host_memory`'s opt-in heap settings: 0 faults
and ~0.01 s of kernel time per step of the same U-Net, against ~3,000 faults and
0.7-0.8 s with huge pages alone) the launchers leave huge pages out: on top of
those settings they only cost memory (the never-trimmed heap in 2 MiB pages:
8.4 GB resident, 2.5 s of kernel time per step; `benchmarks/RESULTS.md`,
"Library path").

Tunables are read only when a process starts, so `python -m experiments.<launcher>`
re-executes itself once, before importing anything heavy, with the tunable
appended to `GLIBC_TUNABLES` (`experiments/__init__.py`). Nothing happens with
`MEDJAX_HOST_HEAP=1`, when the tunable is already there, off Linux/glibc, on glibc < 2.35, when the kernel's transparent huge
pages are `never`, or with `MEDJAX_HUGEPAGES=0`.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional

OPT_OUT = "MEDJAX_HUGEPAGES"
HOST_HEAP_SWITCH = "MEDJAX_HOST_HEAP"  # medjax.host_memory.SWITCH (not imported: too early)
TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> Optional[tuple[int, int]]:
  """(major, minor) of the C library when it is glibc, else None."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):  # not glibc, or no confstr on this platform
    return None


def thp_mode(path: str = THP_SETTING) -> str:
  """The kernel's transparent-huge-page mode ("always", "madvise", "never"; "" if unknown)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return ""
  return text[text.index("[") + 1:text.index("]")] if "[" in text else ""


def tuned_environment(environ: Mapping[str, str], glibc: Optional[tuple[int, int]],
                      thp: str) -> Optional[dict]:
  """The environment to re-execute with, or None when nothing is to change."""
  if environ.get(HOST_HEAP_SWITCH, "0") == "1":  # medjax.host_memory keeps the heap instead
    return None
  if environ.get(OPT_OUT, "1") == "0" or glibc is None or glibc < (2, 35) or thp == "never":
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in current:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
  return env


def reexec_with_huge_pages() -> None:
  """Replaces this process by the same command with the tunable set (see module doc)."""
  env = tuned_environment(os.environ, glibc_version(), thp_mode())
  if env is None or not getattr(sys, "orig_argv", None):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    # argv[0] = the interpreter's full path: Python derives sys.prefix (a venv) from it
    os.execve(sys.executable, [sys.executable] + list(sys.orig_argv[1:]), env)
  except OSError:  # cannot re-execute (a frozen or sandboxed interpreter): run as is
    return


if __name__ == "__main__":  # `python -m experiments.host_allocator`: what a launcher runs with
  print(os.environ.get("GLIBC_TUNABLES", ""))
