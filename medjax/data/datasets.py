"""Prepare a TFDS dataset once and open it as a random-access source.

`load_source("synthetic_organs/3d", "train", data_dir)` builds the dataset
under `data_dir` the first time (array_record files, no TensorFlow) and
returns the split as a random-access data source: `len(src)` cases and
`src[i]`, a dict of numpy arrays (text features as `bytes`).

Concurrency: preparation happens under an exclusive `fcntl` lock on
`<data_dir>/.<name>.lock`. Every process of a multi-host run (or several runs
sharing a `data_dir`) may call `load_source`: the first to take the lock
prepares, the others wait and then find the dataset prepared. TFDS writes
into an `incomplete.*` folder and renames it at the end, so a crashed
preparation never leaves a half-written dataset that looks complete. On a
shared file system without working `flock` (rare; NFSv4 and Lustre support
it), prepare once from a single process before launching the others.

Real datasets: builders of real data read their files from a local
`manual_dir` (nothing is downloaded at run time); pass
`load_source(name, split, data_dir, manual_dir="/path/to/files")`, which is
forwarded as `tfds.download.DownloadConfig(manual_dir=...)`.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Any, Iterator, Optional, Sequence

import tensorflow_datasets as tfds

from medjax.data import synthetic_organs  # noqa: F401  (registers the builder)
from medjax.errors import InputError


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
  """Exclusive advisory lock on `path`, held for the `with` block."""
  with open(path, "a") as handle:
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def get_builder(name: str, data_dir: str, **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
  """The TFDS builder `name` ("dataset" or "dataset/config") rooted at `data_dir`."""
  try:
    return tfds.builder(name, data_dir=data_dir, **builder_kwargs)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise InputError(f"dataset {name!r}: not a known TFDS dataset/config ({first_line})") from None


def prepare(name: str, data_dir: str, *, manual_dir: Optional[str] = None,
            **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
  """Prepares dataset `name` under `data_dir` unless already done; returns its builder.

  Idempotent and safe to call from concurrent processes (file lock, see the
  module docstring).
  """
  os.makedirs(data_dir, exist_ok=True)
  builder = get_builder(name, data_dir, **builder_kwargs)
  if builder.is_prepared():
    return builder
  config = builder.builder_config.name if builder.builder_config else "default"
  with _file_lock(os.path.join(data_dir, f".{builder.name}-{config}.lock")):
    builder = get_builder(name, data_dir, **builder_kwargs)  # re-read what another process wrote
    if not builder.is_prepared():
      download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
      builder.download_and_prepare(download_config=download_config, file_format="array_record")
  return get_builder(name, data_dir, **builder_kwargs)


def load_source(name: str, split: str, data_dir: str, *, manual_dir: Optional[str] = None,
                **builder_kwargs: Any) -> Sequence[dict[str, Any]]:
  """Random-access source of one split, preparing the dataset first if needed.

  Args:
    name: TFDS name with config, e.g. ``"synthetic_organs/3d"``.
    split: ``"train"``, ``"validation"``, ``"test"`` (or a TFDS split slice).
    data_dir: where prepared datasets live.
    manual_dir: local folder with the raw files of a real dataset.
    **builder_kwargs: forwarded to the builder, e.g. ``config=`` a
      `SyntheticOrgansConfig` for a custom (tiny) variant.

  Returns:
    A sequence: `len(src)` and `src[i]` -> dict of numpy arrays.
  """
  builder = prepare(name, data_dir, manual_dir=manual_dir, **builder_kwargs)
  known = sorted(builder.info.splits.keys())
  if split.split("[")[0] not in known:
    raise InputError(f"split {split!r} of {name}: expected one of {', '.join(known)}")
  return builder.as_data_source(split=split)
