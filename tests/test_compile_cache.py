"""The persistent compilation cache: filled by a first run, hit by the second, off when asked."""
import jax
import pytest
from jax._src import monitoring

from experiments.configs import unet3d_synthetic
from medjax.train import compile_cache, run


@pytest.fixture
def cache_events():
  """Counts JAX's `/jax/compilation_cache/*` monitoring events while a test runs."""
  counts = {}

  def listen(event, **kwargs):
    if event.startswith("/jax/compilation_cache/"):
      counts[event] = counts.get(event, 0) + 1

  monitoring.register_event_listener(listen)
  yield counts
  monitoring.unregister_event_listener(listen)


def _config(data_dir, cache_dir, enabled=True):
  c = unet3d_synthetic.get_config("smoke")
  c.data_dir = data_dir
  c.num_steps = 2
  c.checkpoint_every = 2
  c.compilation_cache = enabled
  c.compilation_cache_dir = str(cache_dir)
  return c


@pytest.mark.e2e
def test_first_run_fills_the_cache_and_second_run_hits_it(tmp_path, data_dir, cache_events):
  cache = tmp_path / "jax_cache"
  try:
    # start as a new process does: programs compiled in memory by earlier tests of this
    # process would otherwise be reused without reaching the disk cache in run 1
    jax.clear_caches()
    run.train_and_evaluate(_config(data_dir, cache), str(tmp_path / "run1"))
    stored = compile_cache.cache_entries(str(cache))
    assert len(stored) >= 3  # at least init, train step, evaluation
    hits_after_first = cache_events.get("/jax/compilation_cache/cache_hits", 0)
    jax.clear_caches()  # forget the in-memory executables, as a new process would
    run.train_and_evaluate(_config(data_dir, cache), str(tmp_path / "run2"))
    hits = cache_events.get("/jax/compilation_cache/cache_hits", 0) - hits_after_first
    # every program of the second run comes from the disk: as many hits as entries
    assert hits >= len(stored) - 1
    assert compile_cache.cache_entries(str(cache)) == stored  # nothing new compiled
  finally:
    compile_cache.setup(_config(data_dir, cache, enabled=False))


def test_compilation_cache_false_leaves_the_directory_empty(tmp_path, cache_events):
  cache = tmp_path / "jax_cache"
  c = _config(str(tmp_path), cache, enabled=False)
  assert compile_cache.setup(c) is None
  jax.jit(lambda x: x * 3.0 + 1.0)(jax.numpy.ones((5,))).block_until_ready()
  assert not jax.config.jax_enable_compilation_cache
  assert compile_cache.cache_entries(str(cache)) == []
  assert cache_events.get("/jax/compilation_cache/cache_hits", 0) == 0
  # the same program with the cache on is stored
  c.compilation_cache = True
  try:
    assert compile_cache.setup(c) == str(cache)
    jax.jit(lambda x: x * 3.0 + 1.0)(jax.numpy.ones((5,))).block_until_ready()
    assert len(compile_cache.cache_entries(str(cache))) == 1
  finally:
    compile_cache.setup(_config(str(tmp_path), cache, enabled=False))


def test_default_directory_is_under_the_users_cache(monkeypatch):
  c = unet3d_synthetic.get_config("smoke")
  assert c.compilation_cache is True
  monkeypatch.delenv(compile_cache.ENV_DIR, raising=False)
  assert compile_cache.cache_dir(c).endswith("/.cache/medjax/jax_cache")
  # the test suite's own runs go to the folder conftest.py names
  monkeypatch.setenv(compile_cache.ENV_DIR, "/tmp/suite_cache")
  assert compile_cache.cache_dir(c) == "/tmp/suite_cache"
