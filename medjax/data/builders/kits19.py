"""TFDS builder `kits19`: the KiTS19 challenge data, preprocessed as the MLPerf 3D U-Net does.

Nothing is downloaded: `manual_dir` is the `data/` folder of a clone of the
KiTS19 repository (github.com/neheller/kits19, filled by its
`python -m starter_code.get_imaging`), or the clone itself::

  <manual_dir>/case_00000/imaging.nii.gz        CT in HU
  <manual_dir>/case_00000/segmentation.nii.gz   0 background, 1 kidney, 2 tumour
  ...
  <manual_dir>/case_00209/...

The 210 labelled cases `case_00000` to `case_00209` are prepared (the
reference's `MAX_ID = 210`; later case folders, unlabelled, are ignored), each
by `medjax.data.preprocessing.kits19.preprocess_case` (resampling to 1.6 x 1.2
x 1.2 mm, clip to [-79, 304] HU, normalisation with mean 101 and std 76.9,
edge padding to at least 128^3).

Splits, MLPerf's fixed ones (`evaluation_cases.txt` of the reference): the 42
`EVALUATION_CASES` are ``validation``, the other 168 ``train``. A folder that
lacks cases is refused with one line naming them, unless
`allow_missing_cases=True` (then the cases present are split the same way,
e.g. for a first try on part of the data; such a run is not MLPerf's).

Features: `image` float32 `(D, H, W)` (normalised), `label` uint8 `(D, H, W)`,
`spacing` float32 `(3,)` (the target spacing), `case` text, `boxes` int32
`(M, 7)` (`medjax.data.pipeline.mlperf_sampler.foreground_boxes`, the
balanced crop's objects), `original_spacing` float32 `(3,)` and
`original_shape` int32 `(3,)` (the NIfTI's). Config fields: `manual_dir`,
`allow_missing_cases`, `min_shape` (the padding target; 128^3, smaller only
for tests).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from medjax.data.builders import shard_writing
from medjax.data.pipeline import mlperf_sampler
from medjax.data.preprocessing import kits19 as preprocessing
from medjax.errors import InputError

NUM_CASES = 210  # preprocess_dataset.py: MAX_ID
# evaluation_cases.txt of mlcommons/training retired_benchmarks/unet3d/pytorch (42 cases)
EVALUATION_CASES = tuple(f"case_{i:05d}" for i in (
    0, 3, 5, 6, 12, 24, 34, 41, 44, 49, 52, 56, 61, 65, 66, 70, 76, 78, 80, 84, 86, 87, 92,
    111, 112, 125, 128, 138, 157, 160, 161, 162, 169, 171, 176, 185, 187, 189, 198, 203, 206,
    207))
CASES = tuple(f"case_{i:05d}" for i in range(NUM_CASES))
# how many missing cases an error line names before counting the rest
NAMED_IN_ERROR = 12


@dataclasses.dataclass(eq=False)
class Kits19Config(tfds.core.BuilderConfig):
  """Where the KiTS19 folder is, whether cases may be missing, the padding target."""
  manual_dir: str = ""
  allow_missing_cases: bool = False
  min_shape: tuple[int, ...] = preprocessing.TARGET_SHAPE

  def __post_init__(self):
    self.manual_dir = str(self.manual_dir)
    self.allow_missing_cases = bool(self.allow_missing_cases)
    self.min_shape = tuple(int(n) for n in self.min_shape)
    if len(self.min_shape) != 3 or min(self.min_shape) < 1:
      raise ValueError(f"config {self.name}: min_shape {self.min_shape}: expected 3 sizes >= 1")


def data_folder(manual_dir: str) -> str:
  """The folder holding `case_*`: `manual_dir` itself, or its `data/` (a kits19 clone)."""
  if not os.path.isdir(manual_dir):
    raise InputError(f"dataset_kwargs.manual_dir={manual_dir}: no such folder; expected the "
                     "data/ folder of a KiTS19 clone (case_00000/imaging.nii.gz, ...)")
  inner = os.path.join(manual_dir, "data")
  has_cases = any(name.startswith("case_") for name in os.listdir(manual_dir))
  return inner if not has_cases and os.path.isdir(inner) else manual_dir


def present_cases(folder: str) -> tuple[list[str], list[str]]:
  """`(present, missing)` among the 210 labelled case ids: a case is present when its folder
  has both `imaging.nii.gz` and `segmentation.nii.gz`."""
  present, missing = [], []
  for case in CASES:
    ok = all(os.path.isfile(os.path.join(folder, case, f))
             for f in (preprocessing.IMAGE_FILE, preprocessing.LABEL_FILE))
    (present if ok else missing).append(case)
  return present, missing


def missing_cases_error(folder: str, missing: list[str]) -> InputError:
  """One line: how many cases lack a file, the first of them, and what to change."""
  named = ", ".join(missing[:NAMED_IN_ERROR])
  more = f" and {len(missing) - NAMED_IN_ERROR} more" if len(missing) > NAMED_IN_ERROR else ""
  return InputError(
      f"{folder}: {len(missing)} of the {NUM_CASES} KiTS19 cases lack {preprocessing.IMAGE_FILE} "
      f"or {preprocessing.LABEL_FILE} ({named}{more}); fetch them (the kits19 repository's "
      "python -m starter_code.get_imaging) or set dataset_kwargs.allow_missing_cases=True "
      "to prepare the cases present (not an MLPerf run)")


class Kits19(tfds.core.ShardBasedBuilder):
  """KiTS19 with the MLPerf 3D U-Net preprocessing and splits (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [Kits19Config(name="mlperf", description="MLPerf 3D U-Net preprocessing.")]
  DEFAULT_CONFIG_NAME = "mlperf"

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    volume = lambda dtype: tfds.features.Tensor(shape=(None, None, None), dtype=dtype,
                                                encoding="zlib")
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": volume(np.float32),
            "label": volume(np.uint8),
            "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "case": tfds.features.Text(),
            "boxes": tfds.features.Tensor(shape=(None, 7), dtype=np.int32),
            "original_spacing": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "original_shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
        }),
        homepage="https://github.com/neheller/kits19",
        disable_shuffling=True,  # sorted case order (shard_writing: written as generated)
        metadata=tfds.core.MetadataDict())

  def _shard_iterators_per_split(self, dl_manager: tfds.download.DownloadManager
                                 ) -> dict[str, list[Any]]:
    del dl_manager  # reads config.manual_dir
    config = self.builder_config
    if not config.manual_dir:
      raise InputError("dataset kits19: needs dataset_kwargs.manual_dir, the data/ folder of a "
                       "KiTS19 clone")
    folder = data_folder(config.manual_dir)
    present, missing = present_cases(folder)
    if missing and not (config.allow_missing_cases and present):
      raise missing_cases_error(folder, missing)
    splits = {"train": [c for c in present if c not in EVALUATION_CASES],
              "validation": [c for c in present if c in EVALUATION_CASES]}
    self.info.metadata.update({"cases": splits, "missing": missing, "folder": folder})
    return {split: shard_writing.one_shard(functools.partial(self._generate_examples, folder,
                                                             cases))
            for split, cases in splits.items() if cases}

  def _generate_examples(self, folder: str, cases: list[str]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, case in enumerate(cases):
      raw = preprocessing.read_case(os.path.join(folder, case))
      image, label = preprocessing.preprocess_case(raw.image, raw.label, raw.spacing,
                                                   min_shape=self.builder_config.min_shape)
      yield index, {
          "image": image,
          "label": label,
          "spacing": np.asarray(preprocessing.TARGET_SPACING, np.float32),
          "case": case,
          "boxes": mlperf_sampler.foreground_boxes(label),
          "original_spacing": np.asarray(raw.spacing, np.float32),
          "original_shape": np.asarray(raw.image.shape, np.int32),
      }
