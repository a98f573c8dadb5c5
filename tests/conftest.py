"""Test set-up: 4 fake CPU devices (for the data-parallel tests), a compilation cache and a
dataset folder shared by the whole run. Functions the tests share: `tests/helpers.py`."""
import os

# Must happen before JAX initialises its backends. XLA's CPU backend compiles without LLVM's
# optimisations (-O0): the tests check values, not speed, and most of their programs run for
# milliseconds after a compile of seconds, which -O0 makes about twice as fast (the suite's
# CPU time, `benchmarks/RESULTS.md` "Test suite"). Launchers
# started by the tests inherit the flags (`helpers.launcher_env`); the benchmarks and every
# run outside the tests compile at XLA's default level.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Runs started by the tests (in process and in subprocesses) cache compiled programs in a
# temporary folder, never in the user's ~/.cache/medjax/jax_cache.
import tempfile  # noqa: E402
os.environ.setdefault("MEDJAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="medjax_jax_cache_"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """One TFDS `data_dir` for the whole test run: each synthetic dataset (and each smoke
  variant of one) is generated once, by the first test that loads it, and read by all the
  others. With pytest-xdist the workers share it: `datasets.prepare` takes a file lock, so
  one worker prepares while the others wait."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # basetemp/popen-gwN: the run's folder is its parent
    root = root.parent
  path = root / "datasets"
  path.mkdir(exist_ok=True)
  return str(path)
