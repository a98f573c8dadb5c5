"""The data split a config names: `load_split(config, "train" | "validation" | "test")`."""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from medjax.data import datasets


def load_split(config: ml_collections.ConfigDict, split: str) -> Sequence[dict[str, Any]]:
  """The random-access source of `split` of `config.dataset` (prepared on first use),
  with `config.dataset_kwargs` (e.g. `manual_dir`, shape overrides)."""
  kwargs = config.dataset_kwargs.to_dict() if config.get("dataset_kwargs") else {}
  return datasets.load_source(config.dataset, split, config.data_dir, **kwargs)
