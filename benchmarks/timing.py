"""How every benchmark times code: warm-up calls, then the median of timed calls and its spread.

`measure(call, reps=..., warmup=...)` calls `call()` `warmup` times untimed (the
first of them is reported alone: it holds the compilation, cuDNN autotuning or
first-touch page faults), then `reps` times timed, and returns the median with
the quartiles and the range (`spread`). JAX and CUDA run asynchronously: a call
returns before its device work is done, so every call is followed by `sync`
before the clock stops -- `jax.block_until_ready` of the result for JAX (the
default), `torch_sync(torch)` (`torch.cuda.synchronize`) for PyTorch. The median
and quartiles, not the mean: shared machines add rare long outliers. Compare a
result with a baseline timed in the same process, as ratios.

`time_jitted(fn, args, reps=...)` adds the ahead-of-time compilation of a JAX
function (`compile_s`) in front of `measure`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import numpy as np


def spread(times: Sequence[float], prefix: str = "") -> dict[str, float]:
  """Median, quartiles and range of timed runs (seconds): keys `<prefix>median_s`,
  `<prefix>p25_s`, `<prefix>p75_s`, `<prefix>min_s`, `<prefix>max_s`."""
  t = np.asarray(times, np.float64)
  if t.size == 0:
    raise ValueError("spread: no timed runs (reps must be >= 1)")
  return {f"{prefix}median_s": float(np.median(t)), f"{prefix}p25_s": float(np.percentile(t, 25)),
          f"{prefix}p75_s": float(np.percentile(t, 75)), f"{prefix}min_s": float(t.min()),
          f"{prefix}max_s": float(t.max())}


def timed_calls(call: Callable[[], Any], *, reps: int, warmup: int = 1,
                sync: Callable[[Any], Any] = jax.block_until_ready) -> tuple[float | None, list]:
  """`(seconds of the first warm-up call or None without warm-up, [seconds of each timed
  call])`; `sync(result)` runs inside every timed interval."""
  first = None
  for i in range(int(warmup)):
    t0 = time.perf_counter()
    sync(call())
    if i == 0:
      first = time.perf_counter() - t0
  times = []
  for _ in range(int(reps)):
    t0 = time.perf_counter()
    sync(call())
    times.append(time.perf_counter() - t0)
  return first, times


def measure(call: Callable[[], Any], *, reps: int, warmup: int = 1,
            sync: Callable[[Any], Any] = jax.block_until_ready, prefix: str = "") -> dict:
  """`timed_calls` summarised: `first_<prefix>s` (the first warm-up call; None without
  warm-up) and the `spread` keys with `prefix` (e.g. "step_": `step_median_s`, ...)."""
  first, times = timed_calls(call, reps=reps, warmup=warmup, sync=sync)
  return {f"first_{prefix}s": first, **spread(times, prefix)}


def time_jitted(fn: Callable, args: Sequence[Any], *, reps: int, warmup: int = 1) -> dict:
  """`compile_s` (`jax.jit(fn).lower(*args).compile()`) and `measure` of the compiled
  function on `args`."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  return {"compile_s": compile_s, **measure(lambda: compiled(*args), reps=reps, warmup=warmup)}


def torch_sync(torch: Any) -> Callable[[Any], None]:
  """The `sync` of PyTorch work: `torch.cuda.synchronize()` when CUDA is in use, else
  nothing (CPU kernels return when done)."""
  if torch.cuda.is_available():
    return lambda _: torch.cuda.synchronize()
  return lambda _: None
