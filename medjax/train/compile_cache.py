"""JAX's persistent compilation cache, set up once at the start of a run.

XLA compiles the training step on the first call (15 s for the baseline 3D
U-Net of `benchmarks/PERF_BASELINE.md` on a 2-core CPU); with the cache on, the
executable is written to disk and a second launch of the same config loads it
instead of compiling.
On by default (`config.compilation_cache=True`) under the user's cache
directory, `~/.cache/medjax/jax_cache` (or `$MEDJAX_COMPILATION_CACHE_DIR`,
which the test suite points at a temporary folder), or
`config.compilation_cache_dir`.
`config.compilation_cache=False` turns JAX's persistent cache off for the
process (also one a user set through `JAX_COMPILATION_CACHE_DIR`).

The entry thresholds are set low (any compile time, any size): JAX's defaults
(1 s, and a platform-dependent minimum size) would skip the small CPU programs
of the smoke configs, and the cost of caching a small program is one file.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import ml_collections
from jax._src import compilation_cache as _jax_cache

DEFAULT_DIR = "~/.cache/medjax/jax_cache"
ENV_DIR = "MEDJAX_COMPILATION_CACHE_DIR"


def cache_dir(config: ml_collections.ConfigDict) -> str:
  """The cache directory a config asks for (absolute, `~` expanded):
  `config.compilation_cache_dir`, else `$MEDJAX_COMPILATION_CACHE_DIR`, else `DEFAULT_DIR`."""
  return os.path.abspath(os.path.expanduser(
      config.get("compilation_cache_dir", "") or os.environ.get(ENV_DIR) or DEFAULT_DIR))


def setup(config: ml_collections.ConfigDict) -> Optional[str]:
  """Points JAX's persistent compilation cache at `cache_dir(config)`, or turns it off.

  Returns the directory in use, or None when `config.compilation_cache` is False.
  Safe to call again with another directory in the same process (tests,
  sweeps): JAX's in-memory handle on the previous directory is dropped.
  """
  enabled = bool(config.get("compilation_cache", True))
  path = cache_dir(config) if enabled else None
  if enabled:
    os.makedirs(path, exist_ok=True)
  if (jax.config.jax_enable_compilation_cache == enabled
      and jax.config.jax_compilation_cache_dir == path and _jax_cache.is_initialized()):
    return path
  # The cache object is created once per process from the config at the first
  # compile; drop it so that the new directory (or none) takes effect.
  _jax_cache.reset_cache()
  jax.config.update("jax_enable_compilation_cache", enabled)
  jax.config.update("jax_compilation_cache_dir", path)
  if enabled:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return path


def cache_entries(path: str) -> list[str]:
  """The executables stored in a cache directory (file names, sorted)."""
  if not path or not os.path.isdir(path):
    return []
  return sorted(f for f in os.listdir(path) if not f.startswith("."))
