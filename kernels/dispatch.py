"""The one kernel switch: its values, its check, and the choice by lowering platform.

The switch has one name from the config to the kernel: `config.kernels` ->
the models' `kernels=` field -> `medjax.layers.conv(kernels=)` and
`medjax.losses.*(kernels=)` -> `medjax_kernels.conv3d(kernels=)` and
`medjax_kernels.soft_dice_stats(kernels=)` -> `by_platform` here.

* ``"auto"``: the Pallas kernel where the function is lowered for a GPU
  (cuda/rocm: Triton) or a TPU (Mosaic), the op's XLA path elsewhere (CPU).
* ``"xla"``: the XLA path on every platform.
* ``"pallas"``: the Pallas kernel of the lowering platform; lowered for any
  other platform (CPU), the GPU kernel in the Pallas interpreter, which is slow
  and meant for correctness checks.

The choice follows the platform the function is *lowered for*
(`jax.lax.platform_dependent`), never the process's default backend, so a
function exported for `cuda` from a CPU machine carries the Triton kernel.

`BACKENDS` are not switch values: tests and benchmarks pass them as an op's
`backend=` argument to run one implementation whatever the platform.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax

KERNELS = ("auto", "xla", "pallas")
BACKENDS = ("pallas_gpu", "pallas_tpu", "reference")

# The custom call that the Pallas kernels lower to, per platform.
CUSTOM_CALLS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


def _check(name: str, value: Any, allowed: tuple) -> None:
  if value not in allowed:
    raise ValueError(f"{name}={value!r}: expected one of "
                     f"{', '.join(repr(a) for a in allowed)}")


def check_kernels(kernels: str) -> str:
  """`kernels` if it is a switch value (`KERNELS`), else a one-line ValueError."""
  _check("kernels", kernels, KERNELS)
  return kernels


def check_backend(backend: Optional[str]) -> Optional[str]:
  """`backend` if it is None or one of `BACKENDS`, else a one-line ValueError."""
  if backend is not None:
    _check("backend", backend, BACKENDS)
  return backend


def by_platform(*args: Any, kernels: str, gpu: Callable[..., Any], tpu: Callable[..., Any],
                xla: Callable[..., Any], interpret: bool = False) -> Any:
  """Runs the implementation that `kernels` picks for the lowering platform.

  Args:
    *args: JAX arrays (pytrees; None is allowed) passed to the chosen callable.
    kernels: "auto", "xla" or "pallas" (see the module docstring).
    gpu, tpu: the Triton and Mosaic kernels, called as `f(*args, interpret=bool)`.
    xla: the XLA path, called as `xla(*args)`.
    interpret: run the kernels in the Pallas interpreter: with "pallas" the GPU
      kernel on every platform, with "auto" the kernel of each accelerator
      platform (the XLA path elsewhere); ignored with "xla".
  Returns:
    What the chosen callable returns (every branch must return the same types).
  """
  check_kernels(kernels)
  if kernels == "xla":
    return xla(*args)
  if kernels == "pallas" and interpret:
    return gpu(*args, interpret=True)
  on_gpu = functools.partial(gpu, interpret=interpret)
  on_tpu = functools.partial(tpu, interpret=interpret)
  default = xla if kernels == "auto" else functools.partial(gpu, interpret=True)
  return jax.lax.platform_dependent(*args, cuda=on_gpu, rocm=on_gpu, tpu=on_tpu,
                                    default=default)


def export_for(fn: Callable[..., Any], platform: str, *args: Any) -> jax.export.Exported:
  """`jax.export` of `jax.jit(fn)(*args)` for `platform`, from any host (e.g. a CPU).

  Triton custom calls carry no serialization-compatibility guarantee, so
  `jax.export` refuses them unless told: this allows the platform's Pallas
  custom call. The lowering, which is what fails for a kernel that cannot
  compile for the platform, happens either way.
  """
  checks = [jax.export.DisabledSafetyCheck.custom_call(c) for c in CUSTOM_CALLS.values()]
  return jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=checks)(*args)
