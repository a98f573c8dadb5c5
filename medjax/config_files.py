"""Loading an experiment config file (`path.py[:variant]`) from library code.

The library never imports `experiments` (tests/test_imports.py): tools that
need a config file, such as the sweep's field check or the benchmarks that
default to the run command's config, load it by path with `load`.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

from medjax.errors import InputError

# The repository's experiments/configs folder (a source checkout or an editable install).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments", "configs")


def config_path(name: str) -> str:
  """Path of `experiments/configs/<name>.py` in this checkout."""
  return os.path.join(CONFIGS_DIR, f"{name}.py")


def load(spec: str) -> ml_collections.ConfigDict:
  """`get_config(variant)` of the config file `spec` = `path.py[:variant]`.

  Raises:
    InputError: naming the file when it is missing or its `get_config` fails.
  """
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise InputError(f"--config={spec}: no such config file {path!r}")
  try:
    module_spec = importlib.util.spec_from_file_location(
        "_medjax_config_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
  except Exception as e:  # pylint: disable=broad-except  # any failure of user code
    first = str(e).splitlines()[0] if str(e) else ""
    raise InputError(f"--config={spec}: cannot load the config ({type(e).__name__}: {first})") from None
