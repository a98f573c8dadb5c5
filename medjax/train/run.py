"""The entry point of `experiments.main`: one run, or a run made of runs.

`train_and_evaluate(config, workdir)` hands a config with a `cascade` section
to the cascade orchestrator (`medjax.train.cascade`: two ordinary runs and a
joint evaluation) and any other config to `medjax.train.loop`. Another
multi-run scheme (e.g. an ensemble) would be one more orchestrator module and
one more line here; a new single-run task goes to `medjax.train.tasks`.
"""
from __future__ import annotations

import ml_collections

from medjax.inference.run_predictor import is_cascade
from medjax.train import cascade, compile_cache, loop, config_data


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains (or resumes) and evaluates; returns the eval dict (also in `eval.json`).

  First points JAX's persistent compilation cache at the config's directory
  (`medjax.train.compile_cache`), so that a second launch skips compiling.
  """
  compile_cache.setup(config)
  config = config_data.resolve_dataset(config)  # a folder dataset's classes, channels, patch, U-Net
  if is_cascade(config):
    return cascade.train_and_evaluate(config, workdir)
  return loop.train_and_evaluate(config, workdir)
