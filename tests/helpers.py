"""Functions the test modules share: random inputs, model init/apply in one compiled program,
parameter counts, and the environment of a launcher started as a subprocess.

Import after `conftest.py` has set the environment (pytest loads it first), e.g.
`from helpers import init_apply, normal`.

Random inputs come from numpy, not `jax.random`: every new shape drawn with
`jax.random` compiles its own threefry program, about a second each on a 2-core
CPU, while numpy draws the same distributions at no compile cost. Models are
initialised under `jax.jit` for the same reason (one program instead of one per
parameter), with "rbg" keys (XLA's RngBitGenerator compiles several times faster
than threefry on CPU; the models do not care which bits they start from).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def normal(shape: Sequence[int], seed: int = 0, dtype: Any = jnp.float32,
           scale: float = 1.0) -> jax.Array:
  """Standard normal samples `(*shape)` (times `scale`) as a JAX array of `dtype`."""
  values = np.random.default_rng(seed).normal(size=tuple(shape)) * scale
  return jnp.asarray(values.astype(np.float32)).astype(dtype)


def uniform(shape: Sequence[int], seed: int = 0, low: float = 0.0, high: float = 1.0,
            dtype: Any = jnp.float32) -> jax.Array:
  """Uniform samples in `[low, high)` as a JAX array of `dtype`."""
  values = np.random.default_rng(seed).uniform(low, high, size=tuple(shape))
  return jnp.asarray(values.astype(np.float32)).astype(dtype)


def key(seed: int) -> jax.Array:
  """An "rbg" PRNG key (see the module docstring)."""
  return jax.random.key(seed, impl="rbg")


def abstract_init(model, shape: Sequence[int], **kw):
  """`(variables, output)` as ShapeDtypeStructs: nothing allocated, nothing compiled."""
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kw), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, **kw), variables, x)
  return variables, out


def init(model, x, seed: int = 1, **kw):
  """`model.init` in one compiled program."""
  return jax.jit(lambda x: model.init(key(seed), x, **kw))(x)


def apply(model, variables, x, **kw):
  """`model.apply` in one compiled program."""
  return jax.jit(lambda v, x: model.apply(v, x, **kw))(variables, x)


def init_apply(model, x, **kw):
  """Init and apply in one compiled program: `(variables, model.apply(variables, x, **kw))`."""
  def f(x):
    variables = model.init(key(1), x)
    return variables, model.apply(variables, x, **kw)
  return jax.jit(f)(x)


def count(variables) -> int:
  """Number of parameters in `variables["params"]`."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def launcher_env(devices: int = 4) -> dict:
  """The environment of a launcher subprocess: `devices` fake CPU devices (the test run's
  other XLA flags kept), this checkout first on the path; the compilation cache folder of
  `conftest.py` is inherited."""
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env
