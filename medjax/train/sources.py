"""The data a config names: `load_split(config, "train" | "validation" | "test")`, and
how its images are normalised and checked (`normalizer`, `patch_options`)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from medjax import data  # its submodules load on first use: `datasets` (TFDS) only when a split is read
from medjax.data import transforms
from medjax.errors import InputError


def normalizer(config: ml_collections.ConfigDict) -> Callable[[np.ndarray], np.ndarray]:
  """The per-channel intensity normalisation `config.normalization` names
  (`transforms.NORMALIZATIONS`), the same in training and prediction:
  "ct_window" (default) clips each image to [-200, 300] HU and z-scores it
  with its own statistics; "none" takes images normalised already (a folder
  dataset's, by its plan at prepare time)."""
  name = config.get("normalization", "ct_window")
  if name not in transforms.NORMALIZATIONS:
    raise InputError(f"config.normalization={name!r}: expected one of "
                     f"{', '.join(map(repr, transforms.NORMALIZATIONS))}")
  return transforms.NORMALIZATIONS[name]


def label_classes(config: ml_collections.ConfigDict) -> int:
  """Label values the dataset may hold: `len(config.label_map)` when the run
  remaps labels, else `config.num_classes`."""
  return len(config.label_map) if config.get("label_map") else int(config.num_classes)


def patch_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `pipeline.train_batches` that follow from the
  config beyond its patch fields: the normalisation, the label range check
  and `config.cached_cases` (decoded cases kept in memory)."""
  options = {"normalize": normalizer(config), "num_classes": label_classes(config)}
  if config.get("cached_cases") is not None:
    options["cache_size"] = int(config.cached_cases)
  return options


def load_split(config: ml_collections.ConfigDict, split: str) -> Sequence[dict[str, Any]]:
  """The random-access source of `split` of `config.dataset` (prepared on first use),
  with `config.dataset_kwargs` (e.g. `manual_dir`, shape overrides)."""
  kwargs = config.dataset_kwargs.to_dict() if config.get("dataset_kwargs") else {}
  return data.datasets.load_source(config.dataset, split, config.data_dir, **kwargs)
