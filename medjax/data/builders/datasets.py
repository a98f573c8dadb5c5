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

TFDS warns each time a builder of a derived config is opened ("Using custom
data configuration ...", and before it is prepared "Variant folder ... has no
dataset_info.json"): a folder run opens its builder a dozen times. `get_builder`
installs `TfdsNoticeFilter` on the logger TFDS writes to, which drops exactly
those two notices; every other warning passes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
from typing import Any, Iterator, Optional, Sequence

import tensorflow_datasets as tfds

from medjax.data.builders import folder_datasets, kits19, medmnist, synthetic_organs  # noqa: F401  (registers the builders)
from medjax.data.builders import detection_folders, synthetic_nodules  # noqa: F401  (registers the builders)
from medjax.errors import InputError


class TfdsNoticeFilter(logging.Filter):
  """Drops the notices TFDS logs whenever a builder of a derived config is opened."""

  NOTICES = ("Using custom data configuration", "has no dataset_info.json")

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in self.NOTICES)


TFDS_LOGGER = "absl"  # tensorflow_datasets logs through absl.logging
_NOTICE_FILTER = TfdsNoticeFilter()


def quiet_tfds_notices() -> None:
  """Installs `TfdsNoticeFilter` on TFDS's logger (once)."""
  logger = logging.getLogger(TFDS_LOGGER)
  if _NOTICE_FILTER not in logger.filters:
    logger.addFilter(_NOTICE_FILTER)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
  """Exclusive advisory lock on `path`, held for the `with` block."""
  with open(path, "a") as handle:
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _config_with_overrides(name: str, overrides: dict[str, Any]) -> tuple[str, Any]:
  """("dataset", derived config) for config-field overrides such as `shape=`, or
  (`name`, None) when every override is the named config's value.

  Lets a config file or flag shrink a dataset (`dataset_kwargs.shape`,
  `dataset_kwargs.split_sizes`, ...) without building config objects: the
  derived config is named `<config>_<digest of the overrides>`, so each
  variant is prepared into its own folder. A dict given for a field made of
  `(name, value)` pairs (`split_sizes={"train": 50}`) replaces the named
  config's values of those names only.
  """
  dataset, _, config_name = name.partition("/")
  cls = tfds.builder_cls(dataset)
  configs = {c.name: c for c in getattr(cls, "BUILDER_CONFIGS", [])}
  base = configs.get(config_name or getattr(cls, "DEFAULT_CONFIG_NAME", None) or "")
  if base is None or not dataclasses.is_dataclass(base):
    raise InputError(f"dataset {name!r}: does not take config overrides {sorted(overrides)}")
  fields = {f.name for f in dataclasses.fields(base)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise InputError(f"dataset {name!r}: unknown config fields {unknown}; expected some of "
                     f"{sorted(fields - {'name', 'version', 'release_notes', 'supported_versions', 'description', 'tags'})}")
  overrides = {k: _merge_named_values(getattr(base, k), v) for k, v in overrides.items()}
  try:
    config = dataclasses.replace(base, **overrides)
  except (TypeError, ValueError) as error:
    raise InputError(f"dataset {name!r}: bad config overrides ({error})") from None
  # Digest of the normalised fields that differ from the named config: [16, 24, 24] and
  # (16, 24, 24) are one variant, and spelling out a default (`skip_bad_cases=False`)
  # does not prepare a second copy.
  differ = [k for k in overrides if k == "manual_dir" or getattr(config, k) != getattr(base, k)]
  if not differ:
    return name, None
  values = repr(sorted((k, getattr(config, k)) for k in differ))
  digest = hashlib.sha1(values.encode()).hexdigest()[:8]
  if "manual_dir" in overrides:  # a local folder's dataset: named after the folder too
    return dataset, dataclasses.replace(
        config, name=f"{base.name}_{folder_datasets.config_name(config.manual_dir, digest)}")
  return dataset, dataclasses.replace(config, name=f"{base.name}_{digest}")


def _merge_named_values(base_value: Any, value: Any) -> Any:
  """`value`, or for a dict over a tuple of `(name, value)` pairs the pairs updated by it."""
  if not (isinstance(value, dict) and isinstance(base_value, tuple)
          and all(isinstance(p, tuple) and len(p) == 2 for p in base_value)):
    return value
  merged = dict(base_value)
  merged.update(value)
  return merged


def _reads_manual_dir(name: str) -> bool:
  """Whether builder `name`'s configs have a `manual_dir` field (one prepared dataset per folder)."""
  try:
    cls = tfds.builder_cls(name.partition("/")[0])
  except tfds.core.registered.DatasetNotFoundError:
    return False
  return any(dataclasses.is_dataclass(c) and "manual_dir" in {f.name for f in dataclasses.fields(c)}
             for c in getattr(cls, "BUILDER_CONFIGS", []))


def get_builder(name: str, data_dir: str, *, manual_dir: Optional[str] = None,
                **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
  """The TFDS builder `name` ("dataset" or "dataset/config") rooted at `data_dir`.

  `builder_kwargs` go to the builder (e.g. `config=`); keyword arguments
  that are not builder arguments are taken as overrides of the config's
  fields (e.g. `shape=(16, 24, 24)` for `synthetic_organs/3d`).

  A builder of a local folder (`nnunet_raw`, `decathlon`, `lits`,
  `medmnist`, `kits19`: its config has a `manual_dir` field) gets the absolute
  `manual_dir` as a config field, so each folder is prepared into its own
  config folder; the load-time options `fold` and `num_folds` are ignored
  here (`medjax.data.builders.splits` applies them to the prepared ``train`` split).
  """
  quiet_tfds_notices()
  data_dir = os.path.expanduser(data_dir)
  if _reads_manual_dir(name):
    builder_kwargs = {k: v for k, v in builder_kwargs.items()
                      if k not in folder_datasets.LOAD_TIME_KWARGS}
    if "config" not in builder_kwargs:
      builder_kwargs["manual_dir"] = folder_datasets.absolute_manual_dir(manual_dir)
  builder_args = {"config", "version", "file_format"}
  overrides = {k: v for k, v in builder_kwargs.items() if k not in builder_args}
  try:
    if overrides:
      builder_kwargs = {k: v for k, v in builder_kwargs.items() if k in builder_args}
      name, config = _config_with_overrides(name, overrides)
      if config is not None:
        builder_kwargs["config"] = config
    return tfds.builder(name, data_dir=data_dir, **builder_kwargs)
  except InputError:
    raise
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as error:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise InputError(f"dataset {name!r}: not a known TFDS dataset/config ({first_line})") from None


def _remove_empty_parents(path: str, root: str) -> None:
  """Removes `path` and its parents up to (not including) `root` while they are empty."""
  path, root = os.path.abspath(path), os.path.abspath(root)
  while path.startswith(root + os.sep):
    try:
      os.rmdir(path)  # only ever removes an empty folder
    except FileNotFoundError:
      pass
    except OSError:
      return
    path = os.path.dirname(path)


def prepare(name: str, data_dir: str, *, manual_dir: Optional[str] = None,
            **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
  """Prepares dataset `name` under `data_dir` unless already done; returns its builder.

  Idempotent and safe to call from concurrent processes (file lock, see the
  module docstring).
  """
  data_dir = os.path.expanduser(data_dir)
  os.makedirs(data_dir, exist_ok=True)
  builder = get_builder(name, data_dir, manual_dir=manual_dir, **builder_kwargs)
  if builder.is_prepared():
    return builder
  config = builder.builder_config.name if builder.builder_config else "default"
  with _file_lock(os.path.join(data_dir, f".{builder.name}-{config}.lock")):
    # re-read what another process wrote
    builder = get_builder(name, data_dir, manual_dir=manual_dir, **builder_kwargs)
    if not builder.is_prepared():
      download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
      try:
        builder.download_and_prepare(download_config=download_config, file_format="array_record")
      except BaseException:
        _remove_empty_parents(builder.data_dir, data_dir)  # TFDS removed its incomplete.* folder
        raise
  return get_builder(name, data_dir, manual_dir=manual_dir, **builder_kwargs)


def load_source(name: str, split: str, data_dir: str, *, manual_dir: Optional[str] = None,
                **builder_kwargs: Any) -> Sequence[dict[str, Any]]:
  """Random-access source of one split, preparing the dataset first if needed.

  Args:
    name: TFDS name with config, e.g. ``"synthetic_organs/3d"``.
    split: ``"train"``, ``"validation"``, ``"test"`` (or a TFDS split slice).
    data_dir: where prepared datasets live.
    manual_dir: local folder with the raw files of a real dataset.
    **builder_kwargs: forwarded to the builder, e.g. ``config=`` a
      `SyntheticOrgansConfig` for a custom (tiny) variant; other keywords
      override fields of the named config, e.g. ``shape=(16, 24, 24),
      split_sizes={"train": 3, "validation": 1, "test": 2}``.

  Returns:
    A sequence: `len(src)` and `src[i]` -> dict of numpy arrays.
  """
  builder = prepare(name, data_dir, manual_dir=manual_dir, **builder_kwargs)
  known = sorted(builder.info.splits.keys())
  if split.split("[")[0] not in known:
    raise InputError(f"split {split!r} of {name}: expected one of {', '.join(known)}")
  return builder.as_data_source(split=split)
