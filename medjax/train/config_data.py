"""The data a config names: `load_split(config, "train" | "validation" | "test")`
(a folder dataset's cross-validation fold, `splits.json`, `plan.json`, the
skipped bad cases), the builder options it sets (`dataset_kwargs`), the
config fields a folder dataset's plan fills in (`resolve_dataset`), and how
images are normalised and checked (`input_normalizer`, `patch_options`).

`input_normalizer(config)` is the one intensity normalisation of a network's
input: segmentation training and evaluation, classification, the predictor
(`medjax.inference.run_predictor`) and the explanations
(`medjax.explain_report`) all apply it to each channel."""
from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import ml_collections

from medjax import data  # its subpackages load on first use: TFDS only when a split is read
from medjax.data.builders import raw_layouts, splits
from medjax.data.pipeline import transforms
from medjax.errors import InputError
from medjax.train.workdir import Workdir


def input_normalizer(config: ml_collections.ConfigDict) -> transforms.Normalize:
  """The intensity normalisation of one channel `(*S)` -> float32 `(*S)` of every input
  the network of `config` sees, in training, evaluation, prediction and explanation.

  `config.intensity_stats=(mean, std)` (patch classifiers, MedMNIST): every image
  clipped to [-200, 300] and `(x - mean) / std` (`transforms.fixed_window`).
  Else `config.normalization` (`transforms.NORMALIZATIONS`): "ct_window"
  (default) clips each image to [-200, 300] HU and z-scores it with its own
  statistics; "lung_window" clips to [-1000, 400] HU and scales it with fixed
  statistics (chest-CT detection: lung, ground-glass and solid nodules keep
  their contrast); "none" takes images normalised already (a folder dataset's, by
  its plan at prepare time).

  Raises:
    InputError: an unknown `config.normalization`, or one other than "ct_window"
      together with `config.intensity_stats`.
  """
  name = config.get("normalization", "ct_window")
  if name not in transforms.NORMALIZATIONS:
    raise InputError(f"config.normalization={name!r}: expected one of "
                     f"{', '.join(map(repr, transforms.NORMALIZATIONS))}")
  stats = config.get("intensity_stats")
  if stats:
    if name != "ct_window":
      raise InputError(f"config.intensity_stats={tuple(stats)} and config.normalization={name!r}: "
                       "a fixed window takes raw intensities; set one of them")
    return transforms.fixed_window(*stats)
  return transforms.NORMALIZATIONS[name]


def label_classes(config: ml_collections.ConfigDict) -> int:
  """Label values the dataset may hold: `len(config.label_map)` when the run
  remaps labels, else `config.num_classes`."""
  return len(config.label_map) if config.get("label_map") else int(config.num_classes)


def patch_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `pipeline.train_batches` that follow from the
  config beyond its patch fields: the normalisation, the label range check
  and `config.cached_cases` (decoded cases kept in memory)."""
  options = {"normalize": input_normalizer(config), "num_classes": label_classes(config)}
  if config.get("cached_cases") is not None:
    options["cache_size"] = int(config.cached_cases)
  return options


def is_folder_dataset(config: ml_collections.ConfigDict) -> bool:
  """`config.dataset` is a local folder's (`nnunet_raw`, `decathlon`, `lits`):
  planned and preprocessed at prepare time, split into folds at load time."""
  return config.dataset.partition("/")[0] in raw_layouts.LAYOUTS


def dataset_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The builder options `config.dataset_kwargs` sets: its fields without those left
  unset (None, the named dataset's own value), also inside a section such as
  `split_sizes`."""
  def set_only(value):
    if isinstance(value, dict):
      value = {k: set_only(v) for k, v in value.items() if v is not None}
      return {k: v for k, v in value.items() if v != {}}
    return value
  return set_only(config.dataset_kwargs.to_dict()) if config.get("dataset_kwargs") else {}


def folder_builder(config: ml_collections.ConfigDict):
  """The prepared builder of a folder dataset (prepared on first use, once per `manual_dir`)."""
  kwargs = dataset_kwargs(config)
  return data.builders.datasets.prepare(config.dataset, config.data_dir, **kwargs)


class Subset:
  """The cases `indices` of a random-access source, as a random-access source."""

  def __init__(self, source: Sequence[dict[str, Any]], indices: Sequence[int]):
    self.source = source
    self.indices = [int(i) for i in indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[self.indices[index]]


def folder_splits(config: ml_collections.ConfigDict, metadata: dict) -> dict[str, Any]:
  """The case ids of each split of a folder dataset, as `splits.json` stores them.

  nnU-Net's cross-validation (Isensee et al. 2021): fold `dataset_kwargs.fold`
  (default 0) of `dataset_kwargs.num_folds` (default 5) over the prepared
  `train` cases (`splits.kfold`) gives `train` (the other folds) and
  `validation`; `test` is the prepared `test` split (the folder's
  labelled `imagesTs`/`labelsTs`) when there is one, else the validation fold.
  """
  kwargs = dataset_kwargs(config)
  fold, num_folds = int(kwargs.get("fold", 0)), int(kwargs.get("num_folds", 5))
  cases = metadata["cases"]
  train, validation = splits.kfold(cases["train"], num_folds=num_folds, fold=fold)
  has_test = bool(cases.get("test"))
  return {"fold": fold, "num_folds": num_folds, "train": train, "validation": validation,
          "test": list(cases["test"]) if has_test else validation,
          "test_from": "test" if has_test else "validation"}


# nnU-Net's 3D full-resolution U-Net: 32 features at the top level, doubled per
# level, at most 320 (Isensee et al. 2021).
BASE_FEATURES, MAX_FEATURES = 32, 320


def resolve_dataset(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the fields a folder dataset decides filled in (a copy; other datasets: `config`).

  The dataset is prepared first if needed. Fields left empty (0 or ()) are
  taken from its `dataset.json` and plan (`folder_datasets.prepared_metadata`):
  `num_classes` and `class_names` (the declared labels in value order),
  `normalization` ("none" when the config has no such field: the images are
  normalised by the plan already),
  `in_channels` (one per channel name), `spacing` (the target spacing),
  `patch_size`, and the U-Net's `model.features` (nnU-Net's 32 doubling up to
  320, one per planned level), `model.kernel_sizes` and `model.pool_sizes`
  (the plan's, for the first `len(model.features)` levels). Set fields are
  kept, so `--config.patch_size=...` or a smaller `--config.model.features`
  override the plan.

  Raises:
    InputError: `model.features` has more levels than the plan.
  """
  if not is_folder_dataset(config):
    return config
  builder = folder_builder(config)  # imports data.builders.folder_datasets (via data.builders.datasets)
  metadata = data.builders.folder_datasets.prepared_metadata(builder)
  plan, labels = metadata["plan"], metadata["dataset"]["labels"]
  out = copy.deepcopy(config)
  out.unlock()
  if "normalization" not in out:  # a config written for another dataset: the plan normalised
    out.normalization = "none"
  if not out.get("num_classes"):
    out.num_classes = int(plan["num_classes"])
  if not out.get("class_names"):
    out.class_names = tuple(sorted(labels, key=lambda name: labels[name]))
  if not out.get("in_channels"):
    out.in_channels = len(plan["channel_names"])
  if not out.get("spacing"):
    out.spacing = tuple(float(s) for s in plan["target_spacing"])
  if not out.get("patch_size"):
    out.patch_size = tuple(int(p) for p in plan["patch_size"])
  model = out.model
  levels = len(model.get("features") or ()) or int(plan["num_levels"])
  if levels > int(plan["num_levels"]):
    raise InputError(f"config.model.features={tuple(model.features)}: {levels} levels, but the "
                     f"plan of {config.dataset} has {plan['num_levels']} (pool sizes "
                     f"{plan['pool_sizes']}); use at most {plan['num_levels']} features")
  if not model.get("features"):
    model.features = tuple(min(BASE_FEATURES * 2 ** i, MAX_FEATURES) for i in range(levels))
  if not model.get("kernel_sizes"):
    model.kernel_sizes = tuple(tuple(int(k) for k in ks) for ks in plan["kernel_sizes"][:levels])
  if not model.get("pool_sizes"):
    model.pool_sizes = tuple(tuple(int(p) for p in ps) for ps in plan["pool_sizes"][:levels - 1])
  if config.is_locked:
    out.lock()
  return out


def load_split(config: ml_collections.ConfigDict, split: str, *,
               workdir: Optional[Workdir] = None) -> Sequence[dict[str, Any]]:
  """The random-access source of `split` of `config.dataset` (prepared on first use),
  with `config.dataset_kwargs` (e.g. `manual_dir`, shape overrides).

  A folder dataset (`is_folder_dataset`) is split by `folder_splits`; with
  `workdir`, its split (`splits.json`), its plan (`plan.json`, applied by
  `medjax.inference.run_predictor` to new images) and the bad cases the
  dataset left out (`skipped_cases.json`, `dataset_kwargs.skip_bad_cases`) are
  written there, and each skipped case is printed with its reason.
  """
  if not is_folder_dataset(config):
    return data.builders.datasets.load_source(config.dataset, split, config.data_dir,
                                     **dataset_kwargs(config))
  if split not in ("train", "validation", "test"):
    raise InputError(f"split {split!r} of {config.dataset}: expected train, validation or test")
  builder = folder_builder(config)
  metadata = data.builders.folder_datasets.prepared_metadata(builder)
  chosen = folder_splits(config, metadata)
  if workdir is not None:
    workdir.write_plan(metadata["plan"])
    workdir.write_splits(chosen)
    workdir.write_skipped_cases(metadata["skipped"])
    for bad in metadata["skipped"]:
      print(f"skipped case {bad['case']}: {data.builders.folder_datasets.case_problem(bad)}",
            flush=True)
  stored = "test" if split == "test" and chosen["test_from"] == "test" else "train"
  position = {case: i for i, case in enumerate(metadata["cases"][stored])}
  return Subset(builder.as_data_source(split=stored), [position[c] for c in chosen[split]])
