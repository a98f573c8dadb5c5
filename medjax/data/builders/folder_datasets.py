"""TFDS builders `nnunet_raw`, `decathlon`, `lits`: a local folder, planned and preprocessed.

Each builder reads the raw layout of the same name (`medjax.data.builders.raw_layouts`,
whose docstring says exactly which files go where) from `manual_dir` and
writes `array_record` files (no TensorFlow, nothing downloaded)::

  datasets.load_source("nnunet_raw", "train", data_dir, manual_dir="/data/Dataset001_Liver")

(`--config.dataset=nnunet_raw --config.dataset_kwargs.manual_dir=DIR` on the
command line). Preparation, as nnU-Net (Isensee et al., Nature Methods 2021):

1. pass 1 reads every case once (one case in memory at a time): checks it
   (`raw_layouts.read_case`) and takes its `fingerprint.case_fingerprint`
   (training cases only); then `fingerprint.dataset_fingerprint` and
   `planning.make_plan` (target spacing, patch size, pooling, normalisation);
2. pass 2 re-reads each case and writes `preprocessing.preprocess_case`
   (crop to the non-zero region, normalise per channel, resample to the
   target spacing).

Splits: ``train`` (every labelled training case) and ``test`` (the labelled
test cases, nnU-Net's ``imagesTs`` + ``labelsTs``; absent when the folder
has none). Cross-validation folds are taken at load time from ``train``
(`medjax.data.builders.splits.kfold`, `fold`/`num_folds` in `dataset_kwargs`).

Features: `image` float32 `(*S', C)` (normalised, resampled), `label` uint8
`(*S')`, `spacing` float32 `(ndim,)` (the target spacing, mm), `case` text,
`record` text (JSON of the preprocessing record: original shape, spacing,
affine, crop box ... so a prediction maps back), `locations` int32
`(M, 1 + ndim)` rows `[class, i, j(, k)]` (`patches.class_locations`).
Examples are stored in sorted case order; `prepared_metadata(builder)`
returns the plan, the fingerprint, the dataset description, the case ids
of each split in storage order, and the skipped cases.

Prepared once per `manual_dir`: `datasets.load_source` names the builder
config after the absolute `manual_dir` and the other build options
(`skip_bad_cases`, `patch_size`, ...), so two folders never share a
prepared dataset, and a later call reuses the prepared one (edit the raw
files? delete the prepared folder, or it stays as first prepared). Every
case is checked before preparation stops: bad cases without `skip_bad_cases`
raise one `InputError` (`bad_cases_error`) whose `details` name each bad case
with its reason (one line each, as nnU-Net's dataset integrity check), so a
folder is fixed in one pass; it leaves nothing behind (TFDS writes into an
``incomplete.*`` folder that is removed); datasets prepared before are
untouched. With `skip_bad_cases=True` the bad cases are left out and listed
with their reasons in `prepared_metadata(builder)["skipped"]` (a run prints
them and writes them to its workdir, `config_data.load_split`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from medjax.data.builders import raw_layouts, shard_writing
from medjax.data.pipeline import patches
from medjax.data.preprocessing import apply_plan, fingerprint, planning
from medjax.errors import InputError

# Build options that are read when a split is loaded, not when it is prepared
# (`datasets.load_source` drops them before naming the prepared folder).
LOAD_TIME_KWARGS = ("fold", "num_folds")


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """Where the raw folder is and how to prepare it.

  `manual_dir` is required (an absolute path, set by `datasets.load_source`);
  `ndim` is the number of spatial axes of the images (2 for a dataset of 2D
  images); `patch_size` and `max_patch_voxels` (0: the planner's default)
  override the plan.
  """
  manual_dir: str = ""
  skip_bad_cases: bool = False
  ndim: int = 3
  patch_size: tuple[int, ...] = ()
  max_patch_voxels: int = 0

  def __post_init__(self):
    self.manual_dir = str(self.manual_dir)
    self.skip_bad_cases = bool(self.skip_bad_cases)
    self.ndim = int(self.ndim)
    self.patch_size = tuple(int(n) for n in self.patch_size)
    self.max_patch_voxels = int(self.max_patch_voxels)
    if self.ndim not in (2, 3):
      raise ValueError(f"config {self.name}: ndim={self.ndim}; expected 2 or 3")
    if self.patch_size and (len(self.patch_size) != self.ndim or min(self.patch_size) < 1):
      raise ValueError(f"config {self.name}: patch_size {self.patch_size} must have ndim="
                       f"{self.ndim} positive entries")


def prepared_metadata(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """What preparing a folder dataset computed, stored in its prepared folder.

  Returns:
    `{"plan": dict, "fingerprint": dict, "skipped": [{"case": id, "reason":
    str}], "dataset": {"name", "layout", "channel_names", "labels",
    "manual_dir"}, "cases": {"train": [ids in storage order], "test": [...]}}`.
  """
  metadata = builder.info.metadata
  if not metadata or "plan" not in metadata:
    raise InputError(f"dataset {builder.name}/{builder.builder_config.name}: no plan in its "
                     "metadata; is it a prepared folder dataset?")
  return {key: metadata[key] for key in ("plan", "fingerprint", "skipped", "dataset", "cases")}


def case_problem(bad: dict[str, str]) -> str:
  """The reason of a bad case `{"case", "reason"}` without its leading `case <id>: `."""
  return bad["reason"].removeprefix(f"case {bad['case']}: ")


def bad_cases_error(manual_dir: str, bad: list[dict[str, str]]) -> InputError:
  """The error of a folder with bad cases (`{"case", "reason"}` each), as nnU-Net's
  dataset integrity check reports them: one detail line per case, then one line."""
  ids = ", ".join(b["case"] for b in bad)
  count = f"{len(bad)} bad case{'s' if len(bad) > 1 else ''}"
  return InputError(
      f"{count} in {manual_dir} ({ids}; first: {bad[0]['reason']}); fix or remove "
      f"{'them' if len(bad) > 1 else 'it'}, or leave {'them' if len(bad) > 1 else 'it'} out "
      "with dataset_kwargs.skip_bad_cases=True",
      details=[f"bad case {b['case']}: {case_problem(b)}" for b in bad])


class _FolderBuilder(tfds.core.ShardBasedBuilder, skip_registration=True):
  """Shared by the three layouts; `LAYOUT` names the `raw_layouts` reader."""

  LAYOUT = ""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [FolderConfig(name="folder", description="A local folder (manual_dir).")]
  DEFAULT_CONFIG_NAME = "folder"

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    ndim = self.builder_config.ndim
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(None,) * (ndim + 1), dtype=np.float32,
                                      encoding="zlib"),
        "label": tfds.features.Tensor(shape=(None,) * ndim, dtype=np.uint8, encoding="zlib"),
        "spacing": tfds.features.Tensor(shape=(ndim,), dtype=np.float32),
        "case": tfds.features.Text(),
        "record": tfds.features.Text(),
        "locations": tfds.features.Tensor(shape=(None, ndim + 1), dtype=np.int32,
                                          encoding="zlib"),
    })
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=features,
        homepage="https://github.com/medjax/medjax",
        # Stored in sorted case order (shard_writing: one shard per split, written in
        # the order generated), see `prepared_metadata`.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict())

  def _shard_iterators_per_split(self, dl_manager: tfds.download.DownloadManager
                                 ) -> dict[str, list[Any]]:
    del dl_manager  # reads config.manual_dir, nothing to download
    config = self.builder_config
    if not config.manual_dir:
      raise InputError(f"dataset {self.name}: needs dataset_kwargs.manual_dir, the folder with "
                       f"the {self.LAYOUT} layout")
    dataset = raw_layouts.scan(self.LAYOUT, config.manual_dir)
    skipped: list[dict[str, str]] = []
    fingerprints = []
    kept: dict[str, list[raw_layouts.RawCase]] = {"train": [], "test": []}
    test = dataset.test if dataset.test_labelled else ()
    for split, cases in (("train", dataset.training), ("test", test)):
      for case in cases:  # every case is checked, so that one report lists every bad one
        try:
          loaded = self._read(case, dataset)  # one case in memory at a time
          if split == "train":
            fingerprints.append(fingerprint.case_fingerprint(
                loaded.image, loaded.label, loaded.spacing, name=f"case {case.case_id}"))
          del loaded
        except InputError as error:
          skipped.append({"case": case.case_id, "reason": str(error)})
          continue
        kept[split].append(case)
    if skipped and not config.skip_bad_cases:
      raise bad_cases_error(config.manual_dir, skipped)
    if not kept["train"]:
      raise InputError(f"{config.manual_dir}: every training case was skipped as bad "
                       f"(first: {skipped[0]['reason'] if skipped else 'none'})")
    data_fingerprint = fingerprint.dataset_fingerprint(fingerprints, dataset.channel_names)
    overrides: dict[str, Any] = {}
    if config.patch_size:
      overrides["patch_size"] = config.patch_size
    if config.max_patch_voxels:
      overrides["max_patch_voxels"] = config.max_patch_voxels
    plan = planning.make_plan(data_fingerprint, num_classes=len(dataset.labels), **overrides)
    self.info.metadata.update({
        "plan": plan, "fingerprint": data_fingerprint, "skipped": skipped,
        "dataset": {"name": dataset.name, "layout": self.LAYOUT,
                    "channel_names": list(dataset.channel_names), "labels": dataset.labels,
                    "manual_dir": config.manual_dir},
        "cases": {split: [c.case_id for c in cases] for split, cases in kept.items() if cases},
    })
    return {split: shard_writing.one_shard(functools.partial(
                self._generate_examples, cases, dataset, plan))
            for split, cases in kept.items() if cases}

  def _read(self, case: raw_layouts.RawCase, dataset: raw_layouts.RawDataset
            ) -> raw_layouts.LoadedCase:
    loaded = raw_layouts.read_case(case, dataset)
    if loaded.image.ndim - 1 != self.builder_config.ndim:
      raise InputError(f"case {case.case_id}: a {loaded.image.ndim - 1}D image; this dataset is "
                       f"prepared as {self.builder_config.ndim}D (set dataset_kwargs.ndim="
                       f"{loaded.image.ndim - 1})")
    if loaded.label is None:
      raise InputError(f"case {case.case_id}: no label file")
    return loaded

  def _generate_examples(self, cases: list[raw_layouts.RawCase], dataset: raw_layouts.RawDataset,
                         plan: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    ndim = self.builder_config.ndim
    for index, case in enumerate(cases):
      loaded = self._read(case, dataset)
      done = apply_plan.preprocess_case(loaded.image, loaded.label, loaded.spacing,
                                           loaded.affine, plan, name=f"case {case.case_id}")
      del loaded
      rows = [np.concatenate([np.full((len(where), 1), c, np.int32), where], axis=1)
              for c, where in sorted(patches.class_locations(done.label).items())]
      locations = np.concatenate(rows) if rows else np.zeros((0, ndim + 1), np.int32)
      yield index, {
          "image": np.asarray(done.image, np.float32),
          "label": np.asarray(done.label, np.uint8),
          "spacing": np.asarray(plan["target_spacing"], np.float32),
          "case": case.case_id,
          "record": json.dumps(done.record),
          "locations": locations.astype(np.int32),
      }


class NnunetRaw(_FolderBuilder):
  """The nnU-Net v2 raw layout (`raw_layouts` module docstring). `manual_dir` holds:

  * ``dataset.json``: ``channel_names`` {"0": name, ...}, ``labels`` {name: 0..K-1},
    ``file_ending`` (e.g. ".nii.gz", ".nrrd", ".mha"), ``numTraining``;
  * ``imagesTr/{case}_{XXXX}{file_ending}``: channel XXXX (0000, 0001, ...) of each case;
  * ``labelsTr/{case}{file_ending}``: its integer label map on the same grid;
  * optional ``imagesTs/{case}_{XXXX}{file_ending}`` and ``labelsTs/{case}{file_ending}``
    (the ``test`` split, prepared only when labelled).
  """
  LAYOUT = "nnunet_raw"


class Decathlon(_FolderBuilder):
  """A Medical Segmentation Decathlon task folder (`raw_layouts` module docstring). `manual_dir`
  (e.g. ``Task01_BrainTumour/``) holds:

  * ``dataset.json``: ``modality`` {"0": name, ...}, ``labels`` {"0": "background", ...},
    ``training`` [{"image": "./imagesTr/X.nii.gz", "label": "./labelsTr/X.nii.gz"}, ...];
  * ``imagesTr/X.nii.gz``: one NIfTI per case, several modalities as a 4D file (channels);
  * ``labelsTr/X.nii.gz``. ``imagesTs/`` (unlabelled) is not prepared.
  """
  LAYOUT = "decathlon"


class Lits(_FolderBuilder):
  """LiTS (`raw_layouts` module docstring): ``volume-N.nii`` (CT) and ``segmentation-N.nii``
  (0 background, 1 liver, 2 tumour; ``.nii.gz`` also read) anywhere below `manual_dir`, e.g.
  the download's ``Training Batch 1/`` and ``Training Batch 2/``; case ids ``volume-N``.
  ``test-volume-N.nii`` (unlabelled) is not prepared.
  """
  LAYOUT = "lits"


BUILDERS = {"nnunet_raw": NnunetRaw, "decathlon": Decathlon, "lits": Lits}


def config_name(manual_dir: str, digest: str) -> str:
  """The prepared config's name: the folder's base name (letters, digits, _) and a digest."""
  base = "".join(ch if ch.isalnum() else "_" for ch in os.path.basename(manual_dir.rstrip("/")))
  return f"{(base or 'folder')[:40]}_{digest}"


def absolute_manual_dir(manual_dir: Optional[str]) -> str:
  """`manual_dir` as an absolute, normalised path (the key of a prepared dataset)."""
  if not manual_dir:
    raise InputError("dataset_kwargs.manual_dir: a folder dataset needs the folder of its raw files")
  return os.path.normpath(os.path.abspath(os.path.expanduser(str(manual_dir))))
