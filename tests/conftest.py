"""Test set-up: 4 fake CPU devices (for the data-parallel tests), float32 defaults."""
import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runs started by the tests (in process and in subprocesses) cache compiled programs in a
# temporary folder, never in the user's ~/.cache/medjax/jax_cache.
import tempfile  # noqa: E402
os.environ.setdefault("MEDJAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="medjax_jax_cache_"))


# ----------------------------------------------------------------------------- model test helpers
# Shared by tests/test_models_*.py (`from conftest import _init_apply, ...`).
# Imported after the environment above is set, so JAX still sees it.
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def _abstract_init(model, shape, **kw):
  """Variables as ShapeDtypeStructs (nothing allocated) and the output shape."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **kw), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, **kw), variables, x)
  return variables, out


def _key(seed: int):
  # "rbg" keys: XLA compiles threefry random bits slowly on CPU (~1 s per
  # initialised tensor), RngBitGenerator ~6x faster; the models don't care.
  return jax.random.key(seed, impl="rbg")


def _normal(shape, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _init(model, x, **kw):
  """Jitted init (one compilation instead of one per op: much faster on CPU)."""
  return jax.jit(lambda x: model.init(_key(1), x, **kw))(x)


def _apply(model, variables, x, **kw):
  return jax.jit(lambda v, x: model.apply(v, x, **kw))(variables, x)


def _init_apply(model, x, **kw):
  """Init and apply in one compiled program: `(variables, model.apply(variables, x, **kw))`."""
  def f(x):
    variables = model.init(_key(1), x)
    return variables, model.apply(variables, x, **kw)
  return jax.jit(f)(x)


def _count(variables) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
