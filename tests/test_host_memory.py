"""With `MEDJAX_HOST_HEAP=1`, `import medjax` sets glibc's allocator up (`medjax.host_memory`)
in a plain process; by default (or with `MEDJAX_HOST_HEAP=0`) it does not; neither changes a
computed number."""
import json
import os
import subprocess
import sys

import pytest

from medjax import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = host_memory._libc() is not None  # pylint: disable=protected-access

# Run in a fresh `python -c` process: import medjax, then on a NEW thread (as XLA's
# workers are) allocate 96 MiB, touch it, free it, and allocate and touch it again.
PROBE = r"""
import ctypes, json, resource, threading
import medjax
from medjax import host_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = (ctypes.c_ssize_t,)
SIZE = 96 << 20
out = {}
def work():
  p = libc.malloc(SIZE); ctypes.memset(p, 1, SIZE); libc.free(p)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(SIZE); ctypes.memset(p, 1, SIZE)
  out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
  out["in_heap"] = p < libc.sbrk(0)   # below the program break: the main heap, not an mmap
  libc.free(p)
t = threading.Thread(target=work); t.start(); t.join()
out["status"] = host_memory.status()
out["released"] = host_memory.release()
print(json.dumps(out))
"""

# A small training-like computation: conv + bias + ReLU forward and both gradients.
NUMBERS = r"""
import hashlib
import jax, jax.numpy as jnp, numpy as np
import medjax
from medjax import layers
x = jax.random.normal(jax.random.key(0), (2, 12, 16, 16, 8))
w = jax.random.normal(jax.random.key(1), (3, 3, 3, 8, 8)) * 0.1
f = jax.jit(jax.value_and_grad(
    lambda x, w: jnp.sum(layers.conv(x, w, None, strides=(1, 1, 1), padding="SAME",
                                     activation="relu", kernels="xla") ** 2), (0, 1)))
value, (gx, gw) = f(x, w)
print(hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in (value, gx, gw))).hexdigest())
"""


def _clean_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", host_memory.SWITCH) and not k.startswith("MALLOC_")}
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
  env.update(extra)
  return env


def _run(code: str, env: dict) -> str:
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.strip().splitlines()[-1]


@pytest.mark.e2e
@pytest.mark.skipif(not GLIBC, reason="the settings are glibc mallopt parameters")
def test_import_medjax_keeps_thread_allocations_in_the_heap_when_switched_on():
  on = json.loads(_run(PROBE, _clean_env(MEDJAX_HOST_HEAP="1")))
  assert on["status"]["applied"] and on["status"]["settings"] == {
      "M_ARENA_MAX": 1, "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1, "M_TOP_PAD": 64 << 20}
  assert on["status"]["backend_started_first"] is False
  assert on["in_heap"]  # a 96 MiB request of a non-main thread, served by the main heap
  assert on["faults"] < 2000  # reused resident memory (96 MiB = 24,576 pages of 4 KiB)
  assert on["released"]  # malloc_trim handed the free 96 MiB back

  off = json.loads(_run(PROBE, _clean_env()))  # the default
  assert off["status"] == {"applied": False,
                           "reason": "off by default (MEDJAX_HOST_HEAP=1 turns it on)"}
  assert not off["in_heap"]  # glibc's default: its own mmap, unmapped again on free
  assert json.loads(_run(PROBE, _clean_env(MEDJAX_HOST_HEAP="0")))["status"] == off["status"]


@pytest.mark.e2e
def test_results_are_bitwise_the_same_with_and_without_the_allocator_settings():
  on = _run(NUMBERS, _clean_env(MEDJAX_HOST_HEAP="1"))
  off = _run(NUMBERS, _clean_env())
  assert len(on) == 64 and on == off


def test_skip_reasons():
  on = {"MEDJAX_HOST_HEAP": "1"}
  assert host_memory.skip_reason(on, True) is None
  default = "off by default (MEDJAX_HOST_HEAP=1 turns it on)"
  assert host_memory.skip_reason({}, True) == default
  assert host_memory.skip_reason({"MEDJAX_HOST_HEAP": "0"}, True) == default
  assert host_memory.skip_reason(on, False) == "not glibc"
  # a huge-page tunable is no malloc parameter of ours: combined
  assert host_memory.skip_reason({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", **on}, True) is None
  user = host_memory.skip_reason({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4", **on}, True)
  assert user == "the environment sets malloc already (glibc.malloc.arena_max)"
  assert "MALLOC_ARENA_MAX" in host_memory.skip_reason({"MALLOC_ARENA_MAX": "2", **on}, True)


def test_this_process_reports_what_import_did():
  """The test process imported medjax: the status is one of the documented outcomes."""
  status = host_memory.status()
  assert set(status) >= {"applied", "reason"}
  if status["applied"]:
    assert status["settings"]["M_ARENA_MAX"] == 1 and status["reason"] == ""
  else:
    assert status["reason"]


VS_TORCH_ENVIRONMENTS = r"""
import json
from benchmarks import vs_torch
base = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.cpu.x=1", "PATH": "/bin",
        "MEDJAX_HOST_HEAP": "1"}
print(json.dumps({path: vs_torch.child_env("torch" if path == "torch" else "medjax", path, base)
                  for path in ("library", "heap_on", "launcher", "torch")}))
"""


def test_vs_torch_environments():
  """Each measured path of `benchmarks.vs_torch` gets its own allocator settings: the library
  path and PyTorch as plain processes, `heap_on` with medjax's heap settings, the launchers'
  huge pages only on the launcher path. (In its own process: the benchmark's absl flags would
  collide with another benchmark's imported by the same test worker.)"""
  env = json.loads(_run(VS_TORCH_ENVIRONMENTS, _clean_env()))
  library, heap_on, launcher, torch_env = (env[p] for p in ("library", "heap_on", "launcher",
                                                            "torch"))
  assert library["GLIBC_TUNABLES"] == "glibc.cpu.x=1" and "MEDJAX_HOST_HEAP" not in library
  assert heap_on["MEDJAX_HOST_HEAP"] == "1" and "hugetlb" not in heap_on["GLIBC_TUNABLES"]
  assert launcher["GLIBC_TUNABLES"].split(":") == ["glibc.cpu.x=1", "glibc.malloc.hugetlb=1"]
  assert "MEDJAX_HOST_HEAP" not in launcher
  assert "MEDJAX_HOST_HEAP" not in torch_env and "hugetlb" not in torch_env["GLIBC_TUNABLES"]
